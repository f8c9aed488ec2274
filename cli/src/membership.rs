//! `drover masters list | add | remove | replace | transfer`: the cluster's Raft members.
//!
//! `replace` is the safe way to swap out a master whose machine or disk is gone: the new
//! id joins as a learner, is promoted by the leader once caught up, and only then is the
//! old id removed, so the cluster never runs with fewer live voters than before.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use drover_proto::pb;

use crate::inspect::print_json;
use crate::masters::Masters;
use crate::table::Table;

#[derive(Subcommand, Debug)]
pub enum MastersCommand {
    /// List the masters: id, address, voter or learner, leader, replication progress.
    List {
        /// Print the leader's response as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a master (as a learner; the leader promotes it to voter once it has caught
    /// up). Start it with `drover-master --id ID --join HOST:PORT,… --data-dir EMPTY_DIR`.
    Add {
        /// The new master, `ID=HOST:PORT` (its id must be new to the cluster).
        #[arg(value_name = "ID=HOST:PORT")]
        member: String,
    },
    /// Remove a master. Removing the leader hands leadership over first.
    Remove {
        /// The master's id.
        id: u64,
    },
    /// Replace master OLD by NEW: add NEW, wait until it is a caught-up voter, then
    /// remove OLD. Start NEW with `--join` before or while this runs.
    Replace(ReplaceArgs),
    /// Hand leadership to another master (the most up-to-date voter unless --to).
    Transfer {
        /// The voter to hand leadership to.
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Args, Debug)]
pub struct ReplaceArgs {
    /// The id of the master to replace.
    pub old: u64,
    /// The replacement, `ID=HOST:PORT`.
    #[arg(value_name = "NEW_ID=HOST:PORT")]
    pub new: String,
    /// Give up if the new master is not a voter after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

fn parse_member(text: &str) -> Result<(u64, String)> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("'{text}' is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| anyhow!("'{text}': the id must be a positive integer"))?;
    let addr = addr.trim();
    if addr
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        bail!("'{text}': the address must be HOST:PORT");
    }
    Ok((id, addr.to_string()))
}

pub async fn run(masters: &Masters, cmd: MastersCommand) -> Result<()> {
    match cmd {
        MastersCommand::List { json } => {
            let resp = list(masters).await?;
            if json {
                return print_json(&resp);
            }
            print!("{}", render(&resp));
        }
        MastersCommand::Add { member } => {
            let (id, address) = parse_member(&member)?;
            let resp = add(masters, id, &address).await?;
            println!("master {id} added as a learner at {address}; it becomes a voter once it has caught up");
            print!(
                "{}",
                render(&pb::ListMastersResponse {
                    masters: resp.masters,
                    ..Default::default()
                })
            );
        }
        MastersCommand::Remove { id } => {
            remove(masters, id).await?;
            println!("master {id} removed");
        }
        MastersCommand::Replace(args) => replace(masters, &args).await?,
        MastersCommand::Transfer { to } => {
            let resp = masters
                .operator(|mut c| async move {
                    c.transfer_leadership(pb::TransferLeadershipRequest {
                        to: to.unwrap_or(0),
                    })
                    .await
                })
                .await
                .context("transferring leadership")?;
            println!("master {} leads", resp.leader_id);
        }
    }
    Ok(())
}

async fn list(masters: &Masters) -> Result<pb::ListMastersResponse> {
    masters
        .operator(|mut c| async move { c.list_masters(pb::ListMastersRequest {}).await })
        .await
        .context("listing masters")
}

async fn add(masters: &Masters, id: u64, address: &str) -> Result<pb::AddMasterResponse> {
    masters
        .operator(|mut c| {
            let address = address.to_string();
            // The new master's registry version is unknown here (0): the leader checks
            // it before promoting the learner.
            async move {
                c.add_master(pb::AddMasterRequest {
                    id,
                    address,
                    max_registry_version: 0,
                })
                .await
            }
        })
        .await
        .with_context(|| format!("adding master {id}"))
}

async fn remove(masters: &Masters, id: u64) -> Result<()> {
    masters
        .operator(|mut c| async move { c.remove_master(pb::RemoveMasterRequest { id }).await })
        .await
        .with_context(|| format!("removing master {id}"))?;
    Ok(())
}

async fn replace(masters: &Masters, args: &ReplaceArgs) -> Result<()> {
    let (new_id, address) = parse_member(&args.new)?;
    if new_id == args.old {
        bail!("the replacement needs a new id: a master is never revived under its old id");
    }
    let before = list(masters).await?;
    if !before.masters.iter().any(|m| m.id == args.old) {
        bail!("master {} is not a member", args.old);
    }
    if !before.masters.iter().any(|m| m.id == new_id) {
        add(masters, new_id, &address).await?;
        eprintln!(
            "master {new_id} added as a learner; waiting for it to catch up (start it with --join)"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let now = list(masters).await?;
        let promoted = now.masters.iter().any(|m| {
            m.id == new_id && m.role == pb::master_member::Role::Voter as i32 && m.recently_active
        });
        if promoted {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "master {new_id} is not a caught-up voter after {} s; is it running with --join? \
                 (master {} was left in place)",
                args.timeout_secs,
                args.old
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("master {new_id} is a voter; removing master {}", args.old);
    remove(masters, args.old).await?;
    println!(
        "master {} replaced by master {new_id} at {address}",
        args.old
    );
    Ok(())
}

/// The masters table.
pub fn render(resp: &pb::ListMastersResponse) -> String {
    let mut table =
        Table::new(&["ID", "ADDRESS", "ROLE", "LEADER", "MATCH", "ACTIVE"]).right(&["MATCH"]);
    for m in &resp.masters {
        let role = match pb::master_member::Role::try_from(m.role) {
            Ok(pb::master_member::Role::Voter) => "voter",
            Ok(pb::master_member::Role::Learner) => "learner",
            _ => "?",
        };
        table.row(vec![
            m.id.to_string(),
            m.address.clone(),
            role.to_string(),
            if m.is_leader { "*" } else { "" }.to_string(),
            m.match_index.to_string(),
            if m.recently_active { "yes" } else { "no" }.to_string(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_member("4=10.0.0.4:5050").unwrap(),
            (4, "10.0.0.4:5050".to_string())
        );
        assert!(parse_member("0=a:1").is_err());
        assert!(parse_member("a:1").is_err());
        assert!(parse_member("4=nohost").is_err());
    }

    #[test]
    fn table_shows_roles_and_leader() {
        let resp = pb::ListMastersResponse {
            masters: vec![
                pb::MasterMember {
                    id: 1,
                    address: "a:1".into(),
                    role: pb::master_member::Role::Voter as i32,
                    is_leader: true,
                    match_index: 10,
                    recently_active: true,
                },
                pb::MasterMember {
                    id: 4,
                    address: "d:4".into(),
                    role: pb::master_member::Role::Learner as i32,
                    is_leader: false,
                    match_index: 3,
                    recently_active: false,
                },
            ],
            ..Default::default()
        };
        let text = render(&resp);
        assert!(text.contains("voter") && text.contains("learner"), "{text}");
        let line4 = text.lines().find(|l| l.starts_with('4')).unwrap();
        assert!(line4.contains("no"), "{line4}");
    }
}

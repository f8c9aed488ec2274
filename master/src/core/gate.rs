//! The ACCEPT gate: one pure check of an ACCEPT against current state (outstanding offers
//! and the registry), before anything is proposed or sent.
//!
//! Call-level problems (unknown, foreign or repeated offers; offers from several agents;
//! unsupported operations) refuse the whole call with a precise gRPC status and change
//! nothing. Task-level problems (bad or duplicate ids, empty commands, invalid resources,
//! resources beyond what the offers hold, a task aimed at another agent) turn that task into
//! TASK_ERROR with a reason; the call's other tasks go ahead.

use std::collections::{HashMap, HashSet};

use tonic::Status;

use drover_proto::ids::validate_id;
use drover_proto::pb::{self, operation::Type as OpType};
use drover_proto::{AgentId, FrameworkId, OfferId, Resources, TaskId};

use super::OfferRec;
use crate::registry::{Registry, TaskKey};

/// Most tasks one ACCEPT may launch.
pub const MAX_TASKS_PER_ACCEPT: usize = 10_000;
/// Longest command line accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most environment variables, arguments or labels per task.
pub const MAX_LIST_ITEMS: usize = 1024;

/// What an accepted call will do.
#[derive(Debug, Default)]
pub struct Plan {
    pub agent_id: AgentId,
    /// Tasks to commit and launch, with `agent_id` filled in.
    pub launch: Vec<pb::TaskInfo>,
    /// Tasks refused, with the reason (sent as TASK_ERROR).
    pub errors: Vec<(TaskId, String)>,
    /// Resources the launched tasks use.
    pub used: Resources,
    /// Everything the accepted offers held.
    pub offered: Resources,
}

/// Checks an ACCEPT. `offers` is the leader's table of outstanding offers.
pub fn check(
    framework_id: &FrameworkId,
    offer_ids: &[OfferId],
    operations: &[pb::Operation],
    offers: &HashMap<OfferId, OfferRec>,
    registry: &Registry,
) -> Result<Plan, Status> {
    if offer_ids.is_empty() {
        return Err(Status::invalid_argument("ACCEPT names no offer"));
    }
    let mut seen = HashSet::new();
    let mut agent: Option<AgentId> = None;
    let mut offered = Resources::new();
    for id in offer_ids {
        if !seen.insert(id) {
            return Err(Status::invalid_argument(format!(
                "offer {id} appears twice in one ACCEPT"
            )));
        }
        let Some(o) = offers.get(id) else {
            return Err(Status::not_found(format!(
                "offer {id} is not outstanding (unknown, already accepted or declined, rescinded, or expired)"
            )));
        };
        if &o.framework_id != framework_id {
            return Err(Status::permission_denied(format!(
                "offer {id} was made to another framework"
            )));
        }
        match &agent {
            Some(a) if a != &o.agent_id => {
                return Err(Status::invalid_argument(format!(
                "offers {} and {id} are on different agents; one ACCEPT uses offers of one agent",
                offer_ids[0]
            )))
            }
            _ => agent = Some(o.agent_id.clone()),
        }
        offered.add(&o.resources);
    }
    let agent_id = agent.expect("at least one offer");
    let mut plan = Plan {
        agent_id: agent_id.clone(),
        offered: offered.clone(),
        ..Default::default()
    };
    let mut total_tasks = 0usize;
    for op in operations {
        match OpType::try_from(op.r#type).unwrap_or(OpType::Unspecified) {
            OpType::Launch => {
                total_tasks += op.launch.as_ref().map_or(0, |l| l.task_infos.len());
            }
            OpType::Unspecified => {
                return Err(Status::invalid_argument("operation without a type"));
            }
            other => {
                return Err(Status::unimplemented(format!(
                    "operation {} is not supported yet (LAUNCH_GROUP arrives with task groups, RESERVE/UNRESERVE/CREATE/DESTROY with reservations and volumes)",
                    other.as_str_name()
                )));
            }
        }
    }
    if total_tasks > MAX_TASKS_PER_ACCEPT {
        return Err(Status::invalid_argument(format!(
            "ACCEPT launches {total_tasks} tasks; at most {MAX_TASKS_PER_ACCEPT} per call"
        )));
    }

    let mut remaining = offered;
    let mut ids_in_call = HashSet::new();
    for op in operations {
        let Some(launch) = &op.launch else { continue };
        for task in &launch.task_infos {
            let task_id = task.task_id.clone().unwrap_or_default();
            match check_task(
                framework_id,
                &agent_id,
                task,
                &remaining,
                &mut ids_in_call,
                registry,
            ) {
                Ok(res) => {
                    remaining.sub_saturating(&res);
                    plan.used.add(&res);
                    let mut t = task.clone();
                    t.agent_id = Some(agent_id.clone());
                    plan.launch.push(t);
                }
                Err(why) => plan.errors.push((task_id, why)),
            }
        }
    }
    Ok(plan)
}

/// Whether the task runs an image of the agent's image store in a linux container (type
/// LINUX, or unspecified: the agent's default, linux on a root agent).
fn runs_image(task: &pb::TaskInfo) -> bool {
    use pb::container_info::Type;
    task.container.as_ref().is_some_and(|c| {
        (c.r#type == Type::Linux as i32 || c.r#type == Type::Unspecified as i32)
            && c.image.as_ref().is_some_and(|i| !i.name.trim().is_empty())
    })
}

fn check_task(
    framework_id: &FrameworkId,
    agent_id: &AgentId,
    task: &pb::TaskInfo,
    remaining: &Resources,
    ids_in_call: &mut HashSet<TaskId>,
    registry: &Registry,
) -> Result<Resources, String> {
    let task_id = task.task_id.clone().unwrap_or_default();
    validate_id("task", task_id.as_str())?;
    if !ids_in_call.insert(task_id.clone()) {
        return Err(format!("task id {task_id} is used twice in this ACCEPT"));
    }
    let key = TaskKey::new(framework_id, &task_id);
    if registry.task_state(&key).is_some() {
        return Err(format!(
            "task id {task_id} is already in use by this framework"
        ));
    }
    if let Some(a) = &task.agent_id {
        if !a.is_empty() && a != agent_id {
            return Err(format!(
                "task names agent {a} but the offers are on agent {agent_id}"
            ));
        }
    }
    if task.name.len() > 1024 {
        return Err("task name is longer than 1024 bytes".into());
    }
    if task.labels.len() > MAX_LIST_ITEMS {
        return Err(format!("task has more than {MAX_LIST_ITEMS} labels"));
    }
    // A Docker task, or a task that runs an image in a linux container, may leave its
    // command out and run the image's own (`Entrypoint` + `Cmd`, or its `Entrypoint` with
    // the arguments).
    let docker = task
        .container
        .as_ref()
        .is_some_and(|c| c.r#type == pb::container_info::Type::Docker as i32);
    let image = docker || runs_image(task);
    let no_command = pb::CommandInfo::default();
    let cmd = match task.command.as_ref() {
        Some(cmd) => cmd,
        None if image => &no_command,
        None => return Err("task has no command".into()),
    };
    let empty = if cmd.shell {
        cmd.value.trim().is_empty()
    } else {
        cmd.value.trim().is_empty() && cmd.arguments.first().is_none_or(|a| a.is_empty())
    };
    if empty && (cmd.shell || !image) {
        return Err("task command is empty".into());
    }
    let size = cmd.value.len() + cmd.arguments.iter().map(String::len).sum::<usize>();
    if size > MAX_COMMAND_BYTES {
        return Err(format!(
            "task command is longer than {MAX_COMMAND_BYTES} bytes"
        ));
    }
    if cmd.arguments.len() > MAX_LIST_ITEMS || cmd.environment.len() > MAX_LIST_ITEMS {
        return Err(format!(
            "task has more than {MAX_LIST_ITEMS} arguments or environment variables"
        ));
    }
    if cmd
        .environment
        .iter()
        .any(|e| e.name.is_empty() || e.name.contains('='))
    {
        return Err("task environment has an empty name or a name containing '='".into());
    }
    if let Some(kp) = &task.kill_policy {
        let g = kp.grace_period_seconds;
        if !(g.is_finite() && (0.0..=3600.0).contains(&g)) {
            return Err(format!(
                "kill grace period {g} must be between 0 and 3600 seconds"
            ));
        }
    }
    super::task_checks::validate(task)?;
    let res =
        Resources::from_proto(&task.resources).map_err(|e| format!("invalid resources: {e}"))?;
    if res.cpus() <= 0.0 && res.mem() <= 0.0 {
        return Err("task uses no cpus and no mem; give it at least one of them".into());
    }
    if !remaining.contains(&res) {
        return Err(format!(
            "task needs {res} but the offers only have {remaining} left"
        ));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Command;

    fn offer(fw: &str, agent: &str, res: &str) -> OfferRec {
        OfferRec {
            framework_id: FrameworkId::new(fw),
            agent_id: AgentId::new(agent),
            resources: Resources::parse(res).unwrap(),
            created_ms: 0,
        }
    }

    fn task(id: &str, res: &str, cmd: &str) -> pb::TaskInfo {
        pb::TaskInfo {
            name: id.into(),
            task_id: Some(TaskId::new(id)),
            resources: Resources::parse(res).unwrap().to_proto(),
            command: Some(pb::CommandInfo {
                value: cmd.into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn launch(tasks: Vec<pb::TaskInfo>) -> Vec<pb::Operation> {
        vec![pb::Operation {
            r#type: OpType::Launch as i32,
            launch: Some(pb::operation::Launch { task_infos: tasks }),
            ..Default::default()
        }]
    }

    fn setup() -> (HashMap<OfferId, OfferRec>, Registry) {
        let mut offers = HashMap::new();
        offers.insert(OfferId::new("o1"), offer("f1", "a1", "cpus:2;mem:1024"));
        offers.insert(OfferId::new("o2"), offer("f2", "a1", "cpus:1;mem:512"));
        offers.insert(OfferId::new("o3"), offer("f1", "a2", "cpus:1;mem:512"));
        let mut reg = Registry::default();
        reg.apply(&Command::AddFramework {
            framework_id: FrameworkId::new("f1"),
            info: Default::default(),
            now_ms: 0,
        });
        reg.apply(&Command::RegisterAgent {
            agent_id: AgentId::new("a1"),
            info: pb::AgentInfo {
                resources: Resources::parse("cpus:4;mem:4096").unwrap().to_proto(),
                ..Default::default()
            },
            now_ms: 0,
        });
        reg.apply(&Command::LaunchTasks {
            framework_id: FrameworkId::new("f1"),
            agent_id: AgentId::new("a1"),
            tasks: vec![task("existing", "cpus:1", "true")],
            term: 1,
            now_ms: 0,
        });
        (offers, reg)
    }

    fn ids(v: &[&str]) -> Vec<OfferId> {
        v.iter().map(|s| OfferId::new(*s)).collect()
    }

    #[test]
    fn call_level_refusals() {
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let ops = launch(vec![task("t", "cpus:1", "true")]);
        let code = |ids: Vec<OfferId>| check(&f1, &ids, &ops, &offers, &reg).unwrap_err().code();
        assert_eq!(code(ids(&[])), tonic::Code::InvalidArgument);
        assert_eq!(code(ids(&["nope"])), tonic::Code::NotFound);
        assert_eq!(code(ids(&["o2"])), tonic::Code::PermissionDenied);
        assert_eq!(code(ids(&["o1", "o1"])), tonic::Code::InvalidArgument);
        assert_eq!(code(ids(&["o1", "o3"])), tonic::Code::InvalidArgument);
        let group = vec![pb::Operation {
            r#type: OpType::LaunchGroup as i32,
            ..Default::default()
        }];
        assert_eq!(
            check(&f1, &ids(&["o1"]), &group, &offers, &reg)
                .unwrap_err()
                .code(),
            tonic::Code::Unimplemented
        );
    }

    #[test]
    fn task_level_errors_leave_other_tasks_alone() {
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let mut foreign = task("elsewhere", "cpus:0.1", "true");
        foreign.agent_id = Some(AgentId::new("a2"));
        let ops = launch(vec![
            task("ok1", "cpus:1;mem:512", "echo hi"),
            task("ok1", "cpus:0.1", "echo dup"),
            task("existing", "cpus:0.1", "true"),
            task("empty", "cpus:0.1", "  "),
            task("bad/id", "cpus:0.1", "true"),
            task("greedy", "cpus:1.5", "true"),
            task("nothing", "ports:[1-2]", "true"),
            foreign,
            task("ok2", "cpus:1;mem:512", "echo hi"),
        ]);
        let plan = check(&f1, &ids(&["o1"]), &ops, &offers, &reg).unwrap();
        let launched: Vec<_> = plan
            .launch
            .iter()
            .map(|t| t.task_id.clone().unwrap().value)
            .collect();
        assert_eq!(launched, vec!["ok1", "ok2"]);
        assert_eq!(plan.errors.len(), 7);
        assert!(plan
            .errors
            .iter()
            .any(|(id, why)| id.as_str() == "greedy" && why.contains("only have")));
        assert!(plan
            .errors
            .iter()
            .any(|(id, why)| id.as_str() == "existing" && why.contains("already in use")));
        assert!(plan
            .errors
            .iter()
            .any(|(id, why)| id.as_str() == "elsewhere" && why.contains("agent")));
        assert_eq!(plan.used.cpus(), 2.0);
        assert!(plan
            .launch
            .iter()
            .all(|t| t.agent_id.as_ref().unwrap().as_str() == "a1"));
    }

    #[test]
    fn hostile_resources_become_task_errors() {
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let mut neg = task("neg", "cpus:1", "true");
        neg.resources = vec![drover_proto::resources::scalar("cpus", -1.0)];
        let mut nan = task("nan", "cpus:1", "true");
        nan.resources = vec![drover_proto::resources::scalar("mem", f64::NAN)];
        let mut huge = task("huge", "cpus:1", "true");
        huge.resources = vec![drover_proto::resources::scalar("cpus", 1e300)];
        let plan = check(
            &f1,
            &ids(&["o1"]),
            &launch(vec![neg, nan, huge]),
            &offers,
            &reg,
        )
        .unwrap();
        assert!(plan.launch.is_empty());
        assert_eq!(plan.errors.len(), 3);
        assert!(plan
            .errors
            .iter()
            .all(|(_, why)| why.contains("invalid resources")));
    }

    #[test]
    fn an_image_task_may_leave_its_command_to_the_image() {
        use pb::container_info::Type;
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let with = |id: &str, t: Type, image: &str, command: Option<pb::CommandInfo>| {
            let mut task = task(id, "cpus:0.1", "");
            task.command = command;
            task.container = Some(pb::ContainerInfo {
                r#type: t as i32,
                image: Some(pb::Image { name: image.into() }),
                ..Default::default()
            });
            task
        };
        let args = pb::CommandInfo {
            arguments: vec!["--port".into(), "8080".into()],
            ..Default::default()
        };
        let shell = pb::CommandInfo {
            shell: true,
            ..Default::default()
        };
        let ops = launch(vec![
            with("linux", Type::Linux, "web", None),
            with("default", Type::Unspecified, "web", None),
            with("args", Type::Linux, "web", Some(args)),
            with("no-image", Type::Linux, "", None),
            with("process", Type::Process, "web", None),
            with("empty-shell", Type::Linux, "web", Some(shell)),
        ]);
        let plan = check(&f1, &ids(&["o1"]), &ops, &offers, &reg).unwrap();
        let launched: Vec<_> = plan
            .launch
            .iter()
            .map(|t| t.task_id.clone().unwrap().value)
            .collect();
        assert_eq!(launched, ["linux", "default", "args"]);
        let refused: Vec<(&str, &str)> = plan
            .errors
            .iter()
            .map(|(id, why)| (id.as_str(), why.as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                ("no-image", "task has no command"),
                ("process", "task has no command"),
                ("empty-shell", "task command is empty"),
            ]
        );
    }
}

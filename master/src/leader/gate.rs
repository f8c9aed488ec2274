//! The ACCEPT gate: one pure check of an ACCEPT against current state (outstanding offers
//! and the registry), before anything is proposed or sent.
//!
//! Call-level problems (unknown, foreign or repeated offers; offers from several agents;
//! unsupported operations) refuse the whole call with a precise gRPC status and change
//! nothing. Task-level problems (bad or duplicate ids, empty commands, invalid resources,
//! resources beyond what the offers hold, a task aimed at another agent) turn that task into
//! TASK_ERROR with a reason; the call's other tasks go ahead.
//!
//! A LAUNCH_GROUP goes all or nothing: a problem with its executor or any of its tasks
//! turns every task of the group into TASK_ERROR (REASON_TASK_GROUP_INVALID), the bad
//! one saying why and the others naming it, and nothing of the group is launched.
//!
//! Last, a launch whose message to the agent (RunTask, RunTaskGroup) would exceed what an
//! agent accepts (`drover_proto::limits::MAX_MASTER_MESSAGE_BYTES`) is refused the same
//! way (TASK_ERROR naming the limit), before anything is proposed: such a task, once
//! committed, could never reach its agent.

use std::collections::{BTreeMap, HashMap, HashSet};

use drover_proto::ids::validate_id;
use drover_proto::limits::MAX_MASTER_MESSAGE_BYTES;
use drover_proto::pb::{self, master_message::Msg, operation::Type as OpType};
use drover_proto::{AgentId, ExecutorId, FrameworkId, OfferId, Resources, TaskId};
use prost::Message as _;

use super::{launches, OfferRec, TaskRefusal};
use crate::error::MasterError;
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
    /// Tasks of refused task groups (sent as TASK_ERROR, REASON_TASK_GROUP_INVALID).
    pub group_errors: Vec<(TaskId, String)>,
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
    offers: &BTreeMap<OfferId, OfferRec>,
    registry: &Registry,
) -> Result<Plan, MasterError> {
    if offer_ids.is_empty() {
        return Err(MasterError::InvalidArgument("ACCEPT names no offer".into()));
    }
    let mut seen = HashSet::new();
    let mut agent: Option<AgentId> = None;
    let mut offered = Resources::new();
    for id in offer_ids {
        if !seen.insert(id) {
            return Err(MasterError::InvalidArgument(format!(
                "offer {id} appears twice in one ACCEPT"
            )));
        }
        let Some(o) = offers.get(id) else {
            return Err(MasterError::NotFound(format!(
                "offer {id} is not outstanding (unknown, already accepted or declined, rescinded, or expired)"
            )));
        };
        if &o.framework_id != framework_id {
            return Err(MasterError::PermissionDenied(format!(
                "offer {id} was made to another framework"
            )));
        }
        match &agent {
            Some(a) if a != &o.agent_id => {
                return Err(MasterError::InvalidArgument(format!(
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
            OpType::LaunchGroup => {
                let n = op
                    .launch_group
                    .as_ref()
                    .and_then(|g| g.task_group.as_ref())
                    .map_or(0, |g| g.tasks.len());
                if n == 0 {
                    // No task to carry a TASK_ERROR: the call itself is wrong.
                    return Err(MasterError::InvalidArgument(
                        "LAUNCH_GROUP with no task".into(),
                    ));
                }
                total_tasks += n;
            }
            OpType::Unspecified => {
                return Err(MasterError::InvalidArgument(
                    "operation without a type".into(),
                ));
            }
            other => {
                return Err(MasterError::Unimplemented(format!(
                    "operation {} is not supported yet (RESERVE/UNRESERVE/CREATE/DESTROY arrive with reservations and volumes)",
                    other.as_str_name()
                )));
            }
        }
    }
    if total_tasks > MAX_TASKS_PER_ACCEPT {
        return Err(MasterError::InvalidArgument(format!(
            "ACCEPT launches {total_tasks} tasks; at most {MAX_TASKS_PER_ACCEPT} per call"
        )));
    }

    let mut remaining = offered;
    let mut ids_in_call = HashSet::new();
    // Executors named by the tasks accepted so far in this call.
    let mut executors_in_call: HashMap<ExecutorId, pb::ExecutorInfo> = HashMap::new();
    for op in operations {
        if op.r#type == OpType::LaunchGroup as i32 {
            let group = op.launch_group.clone().unwrap_or_default();
            check_group(
                framework_id,
                &agent_id,
                &group,
                &mut remaining,
                &mut ids_in_call,
                registry,
                &mut plan,
            );
            continue;
        }
        let Some(launch) = &op.launch else { continue };
        for task in &launch.task_infos {
            let task_id = task.task_id.clone().unwrap_or_default();
            let checked = check_task(
                framework_id,
                &agent_id,
                task,
                &remaining,
                &mut ids_in_call,
                registry,
            )
            .and_then(|res| {
                check_executor(framework_id, &agent_id, task, &executors_in_call, registry)?;
                Ok(res)
            });
            match checked {
                Ok(res) => {
                    if let Some(e) = &task.executor {
                        executors_in_call
                            .insert(e.executor_id.clone().unwrap_or_default(), e.clone());
                    }
                    remaining.sub_saturating(&res);
                    plan.used.add(&res);
                    let mut t = task.clone();
                    t.agent_id = Some(agent_id.clone());
                    plan.launch.push(t);
                }
                Err(why) => plan.errors.push((task_id, why.to_string())),
            }
        }
    }
    refuse_oversized(framework_id, registry, &mut plan);
    Ok(plan)
}

/// Refuses the launches whose message to the agent (a RunTask, or one RunTaskGroup per
/// task group) would be larger than an agent takes ([`MAX_MASTER_MESSAGE_BYTES`]):
/// committed, such a task could never reach its agent, whose link would break on it at
/// every attempt. A lone task gets TASK_ERROR; a group is refused as a whole.
fn refuse_oversized(framework_id: &FrameworkId, registry: &Registry, plan: &mut Plan) {
    let info = registry.frameworks.get(framework_id).map(|f| &f.info);
    // Fast path, taken by every ordinary ACCEPT: even all the tasks in one message, each
    // counted twice (a group's message repeats its executor, which is part of a task) with
    // room for tags and lengths, plus the framework's info and id, fit the limit; so no
    // message needs building or measuring.
    let bound = 64
        + framework_id.as_str().len()
        + info.map_or(0, |i| i.encoded_len())
        + plan
            .launch
            .iter()
            .map(|t| 2 * (t.encoded_len() + 16))
            .sum::<usize>();
    if bound <= MAX_MASTER_MESSAGE_BYTES {
        return;
    }
    let info = info.cloned();
    let mut refused: HashSet<TaskId> = HashSet::new();
    for msg in launches::messages(framework_id, info, plan.launch.clone()) {
        let (kind, ids): (&str, Vec<TaskId>) = match &msg {
            Msg::RunTask(r) => (
                "RunTask",
                r.task
                    .iter()
                    .map(|t| t.task_id.clone().unwrap_or_default())
                    .collect(),
            ),
            Msg::RunTaskGroup(g) => (
                "RunTaskGroup",
                g.task_group
                    .iter()
                    .flat_map(|g| &g.tasks)
                    .map(|t| t.task_id.clone().unwrap_or_default())
                    .collect(),
            ),
            _ => continue,
        };
        // The largest term there is: the size does not depend on the leader's term.
        let size = pb::MasterMessage {
            term: u64::MAX,
            msg: Some(msg),
        }
        .encoded_len();
        if size <= MAX_MASTER_MESSAGE_BYTES {
            continue;
        }
        let why = format!(
            "the launch would reach the agent as a {kind} of {size} bytes, more than MAX_MASTER_MESSAGE_BYTES ({MAX_MASTER_MESSAGE_BYTES} bytes), the most an agent accepts; make the task smaller (labels, environment, command, executor, framework info)"
        );
        for id in ids {
            if kind == "RunTask" {
                plan.errors.push((id.clone(), why.clone()));
            } else {
                plan.group_errors
                    .push((id.clone(), format!("the task group is invalid: {why}")));
            }
            refused.insert(id);
        }
    }
    if refused.is_empty() {
        return;
    }
    plan.launch.retain(|t| {
        let id = t.task_id.clone().unwrap_or_default();
        if !refused.contains(&id) {
            return true;
        }
        // The gate parsed these resources already.
        if let Ok(res) = Resources::from_proto(&t.resources) {
            plan.used.sub_saturating(&res);
        }
        false
    });
}

/// Checks one LAUNCH_GROUP: its tasks join `plan.launch` (each carrying the group's
/// executor) only if the executor and every task pass; otherwise every task of the group
/// lands in `plan.group_errors` and nothing of it uses resources.
fn check_group(
    framework_id: &FrameworkId,
    agent_id: &AgentId,
    group: &pb::operation::LaunchGroup,
    remaining: &mut Resources,
    ids_in_call: &mut HashSet<TaskId>,
    registry: &Registry,
    plan: &mut Plan,
) {
    let tasks = group
        .task_group
        .as_ref()
        .map(|g| g.tasks.as_slice())
        .unwrap_or_default();
    let task_ids: Vec<TaskId> = tasks
        .iter()
        .map(|t| t.task_id.clone().unwrap_or_default())
        .collect();
    let refuse_all = |plan: &mut Plan, culprit: Option<&TaskId>, why: TaskRefusal| {
        for id in &task_ids {
            let msg = match culprit {
                Some(bad) if bad != id => {
                    format!("task {bad} of the task group is invalid ({why}); the group is refused as a whole")
                }
                _ => format!("the task group is invalid: {why}"),
            };
            plan.group_errors.push((id.clone(), msg));
        }
    };
    let executor = match check_default_executor(framework_id, group.executor.as_ref()) {
        Ok(e) => e,
        Err(why) => {
            // Reserve the ids all the same: a later operation of this call must not reuse them.
            ids_in_call.extend(task_ids.iter().cloned());
            return refuse_all(plan, None, why);
        }
    };
    let mut budget = remaining.clone();
    let mut used = Resources::new();
    let mut accepted = Vec::with_capacity(tasks.len());
    let mut failure: Option<(TaskId, TaskRefusal)> = None;
    for (task, id) in tasks.iter().zip(&task_ids) {
        let checked = check_group_task(task, &executor).and_then(|()| {
            check_task(framework_id, agent_id, task, &budget, ids_in_call, registry)
        });
        match checked {
            Ok(res) => {
                budget.sub_saturating(&res);
                used.add(&res);
                let mut t = task.clone();
                t.agent_id = Some(agent_id.clone());
                t.executor = Some(executor.clone());
                accepted.push(t);
            }
            Err(why) => {
                if failure.is_none() {
                    failure = Some((id.clone(), why));
                }
                // Keep the remaining ids reserved for the rest of the call.
                ids_in_call.insert(id.clone());
            }
        }
    }
    if let Some((bad, why)) = failure {
        return refuse_all(plan, Some(&bad), why);
    }
    *remaining = budget;
    plan.used.add(&used);
    plan.launch.extend(accepted);
}

/// The executor of a task group, completed (type DEFAULT, the framework's id), or why
/// it cannot run one.
fn check_default_executor(
    framework_id: &FrameworkId,
    executor: Option<&pb::ExecutorInfo>,
) -> Result<pb::ExecutorInfo, TaskRefusal> {
    use pb::executor_info::Type;
    let Some(executor) = executor else {
        return Err("LAUNCH_GROUP names no executor".into());
    };
    match Type::try_from(executor.r#type) {
        Ok(Type::Default) | Ok(Type::Unspecified) => {}
        Ok(Type::Custom) => {
            return Err("task groups run under the agent's DEFAULT executor; a CUSTOM executor takes single tasks through LAUNCH (TaskInfo.executor)".into())
        }
        Err(_) => return Err(refuse!("unknown executor type {}", executor.r#type)),
    }
    let id = executor.executor_id.clone().unwrap_or_default();
    validate_id("executor", id.as_str())?;
    if let Some(fw) = &executor.framework_id {
        if !fw.is_empty() && fw != framework_id {
            return Err(refuse!(
                "the executor names framework {fw}, not the caller's {framework_id}"
            ));
        }
    }
    if executor.command.is_some() {
        return Err("the DEFAULT executor is built into the agent and takes no command".into());
    }
    if !executor.resources.is_empty() {
        return Err("the DEFAULT executor is built into the agent and uses no resources of its own; leave ExecutorInfo.resources empty".into());
    }
    if executor.name.len() > 1024 {
        return Err("executor name is longer than 1024 bytes".into());
    }
    if let Some(c) = &executor.container {
        use pb::container_info::Type as C;
        if c.r#type != C::Unspecified as i32 && c.r#type != C::Linux as i32 {
            return Err(
                "the DEFAULT executor's container may only set the network (type LINUX or unset)"
                    .into(),
            );
        }
    }
    let mut completed = executor.clone();
    completed.r#type = Type::Default as i32;
    completed.framework_id = Some(framework_id.clone());
    Ok(completed)
}

/// What a task of a group may not do that a lone task may.
fn check_group_task(task: &pb::TaskInfo, executor: &pb::ExecutorInfo) -> Result<(), TaskRefusal> {
    if let Some(own) = &task.executor {
        if own.executor_id != executor.executor_id {
            return Err("a task of a group may only name the group's executor".into());
        }
    }
    if task
        .container
        .as_ref()
        .is_some_and(|c| c.r#type == pb::container_info::Type::Docker as i32)
    {
        return Err("Docker tasks cannot join a task group (its tasks run under the linux or process containerizer)".into());
    }
    if task
        .container
        .as_ref()
        .is_some_and(|c| c.network == pb::container_info::Network::Isolated as i32)
    {
        return Err("a task of a group shares the group's network: set ISOLATED on the executor's container, not on the task".into());
    }
    Ok(())
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
) -> Result<Resources, TaskRefusal> {
    let task_id = task.task_id.clone().unwrap_or_default();
    validate_id("task", task_id.as_str())?;
    if !ids_in_call.insert(task_id.clone()) {
        return Err(refuse!("task id {task_id} is used twice in this ACCEPT"));
    }
    let key = TaskKey::new(framework_id, &task_id);
    if registry.task_state(&key).is_some() {
        return Err(refuse!(
            "task id {task_id} is already in use by this framework"
        ));
    }
    if let Some(a) = &task.agent_id {
        if !a.is_empty() && a != agent_id {
            return Err(refuse!(
                "task names agent {a} but the offers are on agent {agent_id}"
            ));
        }
    }
    if task.name.len() > 1024 {
        return Err("task name is longer than 1024 bytes".into());
    }
    if task.labels.len() > MAX_LIST_ITEMS {
        return Err(refuse!("task has more than {MAX_LIST_ITEMS} labels"));
    }
    // A Docker task, or a task that runs an image in a linux container, may leave its
    // command out and run the image's own (`Entrypoint` + `Cmd`, or its `Entrypoint` with
    // the arguments).
    let docker = task
        .container
        .as_ref()
        .is_some_and(|c| c.r#type == pb::container_info::Type::Docker as i32);
    let image = docker || runs_image(task);
    // A custom executor interprets its tasks: their command is optional.
    let executor = task.executor.is_some();
    let no_command = pb::CommandInfo::default();
    let cmd = match task.command.as_ref() {
        Some(cmd) => cmd,
        None if image || executor => &no_command,
        None => return Err("task has no command".into()),
    };
    let empty = if cmd.shell {
        cmd.value.trim().is_empty()
    } else {
        cmd.value.trim().is_empty() && cmd.arguments.first().is_none_or(|a| a.is_empty())
    };
    if empty && !executor && (cmd.shell || !image) {
        return Err("task command is empty".into());
    }
    let size = cmd.value.len() + cmd.arguments.iter().map(String::len).sum::<usize>();
    if size > MAX_COMMAND_BYTES {
        return Err(refuse!(
            "task command is longer than {MAX_COMMAND_BYTES} bytes"
        ));
    }
    if cmd.arguments.len() > MAX_LIST_ITEMS || cmd.environment.len() > MAX_LIST_ITEMS {
        return Err(refuse!(
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
            return Err(refuse!(
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
        return Err(refuse!(
            "task needs {res} but the offers only have {remaining} left"
        ));
    }
    Ok(res)
}

/// Two tasks name the same executor only with the same description (the framework id
/// is the master's to fill in).
fn same_executor(a: &pb::ExecutorInfo, b: &pb::ExecutorInfo) -> bool {
    let strip = |e: &pb::ExecutorInfo| pb::ExecutorInfo {
        framework_id: None,
        ..e.clone()
    };
    strip(a) == strip(b)
}

/// A task's executor: only CUSTOM executors run single tasks (DEFAULT executors run task
/// groups); every live task of the framework that names the same executor id on the same
/// agent carries the same `ExecutorInfo`. An executor has no resources of its own yet: it
/// runs within the resources of its tasks.
fn check_executor(
    framework_id: &FrameworkId,
    agent_id: &AgentId,
    task: &pb::TaskInfo,
    in_call: &HashMap<ExecutorId, pb::ExecutorInfo>,
    registry: &Registry,
) -> Result<(), TaskRefusal> {
    use pb::executor_info::Type;
    let Some(info) = &task.executor else {
        return Ok(());
    };
    if info.r#type != Type::Custom as i32 {
        return Err(
            "LAUNCH runs a task on the command executor (no ExecutorInfo) or on a CUSTOM executor; DEFAULT executors run task groups (LAUNCH_GROUP)"
                .into(),
        );
    }
    let id = info.executor_id.clone().unwrap_or_default();
    validate_id("executor", id.as_str())?;
    if info.name.len() > 1024 {
        return Err("executor name is longer than 1024 bytes".into());
    }
    let cmd = info.command.clone().unwrap_or_default();
    if cmd.value.trim().is_empty() && cmd.arguments.first().is_none_or(|a| a.trim().is_empty()) {
        return Err(refuse!("executor {id} has no command"));
    }
    let size = cmd.value.len() + cmd.arguments.iter().map(String::len).sum::<usize>();
    if size > MAX_COMMAND_BYTES
        || cmd.arguments.len() > MAX_LIST_ITEMS
        || cmd.environment.len() > MAX_LIST_ITEMS
    {
        return Err(refuse!(
            "executor {id}'s command is longer than {MAX_COMMAND_BYTES} bytes or has more than {MAX_LIST_ITEMS} arguments or environment variables"
        ));
    }
    if cmd
        .environment
        .iter()
        .any(|e| e.name.is_empty() || e.name.contains('='))
    {
        return Err(refuse!(
            "executor {id}'s environment has an empty name or a name containing '='"
        ));
    }
    if !info.resources.is_empty() {
        return Err(refuse!(
            "executor {id} names resources of its own, which Drover does not support yet: an executor runs within its tasks' resources"
        ));
    }
    if info
        .container
        .as_ref()
        .is_some_and(|c| c.r#type == pb::container_info::Type::Docker as i32)
    {
        return Err(refuse!(
            "executor {id} asks for a DOCKER container; custom executors run in linux or process containers"
        ));
    }
    let earlier = in_call.get(&id).or_else(|| {
        registry
            .tasks_on_agent(agent_id)
            .filter(|t| &t.framework_id == framework_id)
            .filter(|t| !drover_proto::states::is_terminal(t.state()))
            .filter_map(|t| t.info.executor.as_ref())
            .find(|e| e.executor_id.as_ref() == Some(&id))
    });
    if let Some(earlier) = earlier {
        if !same_executor(earlier, info) {
            return Err(refuse!(
                "executor {id} on agent {agent_id} is already described differently by another task of this framework; every task naming it must carry the same ExecutorInfo"
            ));
        }
    }
    Ok(())
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

    fn setup() -> (BTreeMap<OfferId, OfferRec>, Registry) {
        let mut offers = BTreeMap::new();
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

    trait Kind {
        fn kind(self) -> &'static str;
    }

    impl Kind for MasterError {
        /// The gRPC code the error becomes, by name.
        fn kind(self) -> &'static str {
            match self {
                MasterError::InvalidArgument(_) => "invalid",
                MasterError::NotFound(_) => "not found",
                MasterError::PermissionDenied(_) => "denied",
                MasterError::Unimplemented(_) => "unimplemented",
                _ => "other",
            }
        }
    }

    fn ids(v: &[&str]) -> Vec<OfferId> {
        v.iter().map(|s| OfferId::new(*s)).collect()
    }

    #[test]
    fn call_level_refusals() {
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let ops = launch(vec![task("t", "cpus:1", "true")]);
        let code = |ids: Vec<OfferId>| check(&f1, &ids, &ops, &offers, &reg).unwrap_err().kind();
        assert_eq!(code(ids(&[])), "invalid");
        assert_eq!(code(ids(&["nope"])), "not found");
        assert_eq!(code(ids(&["o2"])), "denied");
        assert_eq!(code(ids(&["o1", "o1"])), "invalid");
        assert_eq!(code(ids(&["o1", "o3"])), "invalid");
        let reserve = vec![pb::Operation {
            r#type: OpType::Reserve as i32,
            ..Default::default()
        }];
        let empty_group = vec![pb::Operation {
            r#type: OpType::LaunchGroup as i32,
            ..Default::default()
        }];
        assert_eq!(
            check(&f1, &ids(&["o1"]), &empty_group, &offers, &reg)
                .unwrap_err()
                .kind(),
            "invalid"
        );
        assert_eq!(
            check(&f1, &ids(&["o1"]), &reserve, &offers, &reg)
                .unwrap_err()
                .kind(),
            "unimplemented"
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

    fn on_executor(id: &str, exec: &str, cmd: &str) -> pb::TaskInfo {
        pb::TaskInfo {
            command: None,
            executor: Some(pb::ExecutorInfo {
                executor_id: Some(ExecutorId::new(exec)),
                r#type: pb::executor_info::Type::Custom as i32,
                command: Some(pb::CommandInfo {
                    value: cmd.into(),
                    shell: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..task(id, "cpus:0.1;mem:16", "")
        }
    }

    fn executor(id: &str, t: pb::executor_info::Type) -> pb::ExecutorInfo {
        pb::ExecutorInfo {
            executor_id: Some(drover_proto::ExecutorId::new(id)),
            r#type: t as i32,
            ..Default::default()
        }
    }

    fn group(executor: pb::ExecutorInfo, tasks: Vec<pb::TaskInfo>) -> pb::Operation {
        pb::Operation {
            r#type: OpType::LaunchGroup as i32,
            launch_group: Some(pb::operation::LaunchGroup {
                executor: Some(executor),
                task_group: Some(pb::TaskGroupInfo { tasks }),
            }),
            ..Default::default()
        }
    }

    fn launched(plan: &Plan) -> Vec<&str> {
        plan.launch
            .iter()
            .map(|t| t.task_id.as_ref().unwrap().as_str())
            .collect()
    }

    #[test]
    fn a_valid_group_launches_every_task_under_the_default_executor() {
        use pb::executor_info::Type;
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let ops = vec![
            group(
                executor("e1", Type::Default),
                vec![
                    task("g1", "cpus:0.5;mem:128", "true"),
                    task("g2", "cpus:0.5", "true"),
                ],
            ),
            // Type unspecified means DEFAULT.
            group(
                executor("e2", Type::Unspecified),
                vec![task("g3", "cpus:0.5", "true")],
            ),
        ];
        let plan = check(&f1, &ids(&["o1"]), &ops, &offers, &reg).unwrap();
        assert_eq!(launched(&plan), ["g1", "g2", "g3"]);
        assert!(plan.errors.is_empty() && plan.group_errors.is_empty());
        assert_eq!(plan.used.cpus(), 1.5);
        for t in &plan.launch {
            let e = t.executor.as_ref().unwrap();
            assert_eq!(e.r#type, Type::Default as i32);
            assert_eq!(e.framework_id.as_ref().unwrap().as_str(), "f1");
            assert_eq!(t.agent_id.as_ref().unwrap().as_str(), "a1");
        }
    }

    #[test]
    fn executors_are_validated_and_consistent_per_agent() {
        let (offers, mut reg) = setup();
        let f1 = FrameworkId::new("f1");
        reg.apply(&Command::LaunchTasks {
            framework_id: f1.clone(),
            agent_id: AgentId::new("a1"),
            tasks: vec![on_executor("live", "ex-live", "./my-executor")],
            term: 1,
            now_ms: 0,
        });
        let mut default = on_executor("default", "ex-d", "x");
        default.executor.as_mut().unwrap().r#type = pb::executor_info::Type::Default as i32;
        let mut docker = on_executor("docker", "ex-docker", "x");
        docker.executor.as_mut().unwrap().container = Some(pb::ContainerInfo {
            r#type: pb::container_info::Type::Docker as i32,
            ..Default::default()
        });
        let mut with_resources = on_executor("res", "ex-res", "x");
        with_resources.executor.as_mut().unwrap().resources =
            Resources::parse("cpus:0.1").unwrap().to_proto();
        let ops = launch(vec![
            // Two tasks on one new executor (no command of their own), in one call.
            on_executor("a", "ex-1", "./my-executor"),
            on_executor("b", "ex-1", "./my-executor"),
            // The same id described differently in the same call.
            on_executor("c", "ex-1", "./other-executor"),
            // Joins a running executor with the same description; differs from it.
            on_executor("d", "ex-live", "./my-executor"),
            on_executor("e", "ex-live", "./changed"),
            on_executor("no-command", "ex-2", " "),
            on_executor("bad-id", "ex/3", "x"),
            default,
            docker,
            with_resources,
        ]);
        let plan = check(&f1, &ids(&["o1"]), &ops, &offers, &reg).unwrap();
        let launched: Vec<_> = plan
            .launch
            .iter()
            .map(|t| t.task_id.clone().unwrap().to_string())
            .collect();
        assert_eq!(launched, ["a", "b", "d"]);
        let errors: HashMap<String, String> = plan
            .errors
            .into_iter()
            .map(|(id, why)| (id.to_string(), why))
            .collect();
        assert!(errors["c"].contains("described differently"), "{errors:?}");
        assert!(errors["e"].contains("described differently"), "{errors:?}");
        assert!(errors["no-command"].contains("no command"), "{errors:?}");
        assert!(errors["bad-id"].contains("executor id"), "{errors:?}");
        assert!(errors["default"].contains("LAUNCH_GROUP"), "{errors:?}");
        assert!(errors["docker"].contains("DOCKER"), "{errors:?}");
        assert!(errors["res"].contains("resources of its own"), "{errors:?}");

        // Another framework may use the same executor id with its own description.
        let f2 = FrameworkId::new("f2");
        let ops = launch(vec![on_executor("x", "ex-live", "./theirs")]);
        let plan = check(&f2, &ids(&["o2"]), &ops, &offers, &reg).unwrap();
        assert_eq!(plan.launch.len(), 1, "{:?}", plan.errors);
    }

    #[test]
    fn one_bad_task_refuses_the_whole_group_and_uses_nothing() {
        use pb::executor_info::Type;
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let ops = vec![
            group(
                executor("e1", Type::Default),
                vec![
                    task("g1", "cpus:0.5", "true"),
                    task("g2", "cpus:0.5", "   "),
                    task("g3", "cpus:0.5", "true"),
                ],
            ),
            launch(vec![task("lone", "cpus:2", "true")]).remove(0),
        ];
        let plan = check(&f1, &ids(&["o1"]), &ops, &offers, &reg).unwrap();
        // The refused group held nothing back: the lone task gets every cpu.
        assert_eq!(launched(&plan), ["lone"]);
        let errors: HashMap<&str, &str> = plan
            .group_errors
            .iter()
            .map(|(id, why)| (id.as_str(), why.as_str()))
            .collect();
        assert_eq!(errors.len(), 3);
        assert!(errors["g2"].contains("task command is empty"), "{errors:?}");
        assert!(errors["g1"].contains("task g2"), "{errors:?}");
        assert!(errors["g3"].contains("task g2"), "{errors:?}");
    }

    #[test]
    fn a_group_beyond_the_offer_is_refused_as_a_whole() {
        use pb::executor_info::Type;
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let ops = vec![group(
            executor("e1", Type::Default),
            vec![task("g1", "cpus:1.5", "true"), task("g2", "cpus:1", "true")],
        )];
        let plan = check(&f1, &ids(&["o1"]), &ops, &offers, &reg).unwrap();
        assert!(plan.launch.is_empty());
        assert_eq!(plan.used.cpus(), 0.0);
        assert_eq!(plan.group_errors.len(), 2);
        assert!(plan
            .group_errors
            .iter()
            .any(|(id, why)| id.as_str() == "g2" && why.contains("only have")));
        assert!(plan
            .group_errors
            .iter()
            .any(|(id, why)| id.as_str() == "g1" && why.contains("task g2")));
    }

    #[test]
    fn bad_group_executors_are_refused() {
        use pb::executor_info::Type;
        let (offers, reg) = setup();
        let f1 = FrameworkId::new("f1");
        let refusal = |e: Option<pb::ExecutorInfo>, tasks: Vec<pb::TaskInfo>| {
            let mut op = group(executor("x", Type::Default), tasks);
            op.launch_group.as_mut().unwrap().executor = e;
            let plan = check(&f1, &ids(&["o1"]), &[op], &offers, &reg).unwrap();
            assert!(plan.launch.is_empty());
            plan.group_errors[0].1.clone()
        };
        let one = || vec![task("g1", "cpus:0.1", "true")];
        assert!(refusal(Some(executor("e", Type::Custom)), one()).contains("CUSTOM"));
        assert!(refusal(None, one()).contains("names no executor"));
        assert!(refusal(Some(executor("", Type::Default)), one()).contains("executor"));
        assert!(refusal(Some(executor("bad/id", Type::Default)), one()).contains("executor"));
        let mut greedy = executor("e", Type::Default);
        greedy.resources = Resources::parse("cpus:0.1").unwrap().to_proto();
        assert!(refusal(Some(greedy), one()).contains("no resources of its own"));
        let mut other = task("g1", "cpus:0.1", "true");
        other.executor = Some(executor("someone-else", Type::Default));
        assert!(
            refusal(Some(executor("e", Type::Default)), vec![other]).contains("group's executor")
        );
        let mut docker = task("g1", "cpus:0.1", "true");
        docker.container = Some(pb::ContainerInfo {
            r#type: pb::container_info::Type::Docker as i32,
            ..Default::default()
        });
        assert!(refusal(Some(executor("e", Type::Default)), vec![docker]).contains("Docker"));
        let mut own_network = task("g1", "cpus:0.1", "true");
        own_network.container = Some(pb::ContainerInfo {
            network: pb::container_info::Network::Isolated as i32,
            ..Default::default()
        });
        assert!(
            refusal(Some(executor("e", Type::Default)), vec![own_network])
                .contains("group's network")
        );
        let dup = vec![
            task("g1", "cpus:0.1", "true"),
            task("g1", "cpus:0.1", "true"),
        ];
        assert!(refusal(Some(executor("e", Type::Default)), dup).contains("twice"));
    }
}

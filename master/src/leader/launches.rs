//! The messages that launch committed tasks on an agent: RunTask for a lone task,
//! RunTaskGroup for the tasks of a task group (those carrying a DEFAULT executor), so a
//! group reaches its agent whole, after an ACCEPT and when launches are sent again.

use drover_proto::pb::{self, executor_info::Type, master_message::Msg};
use drover_proto::FrameworkId;

/// Whether the task belongs to a task group (its executor is the built-in DEFAULT one).
pub fn in_group(task: &pb::TaskInfo) -> bool {
    task.executor
        .as_ref()
        .is_some_and(|e| e.r#type == Type::Default as i32)
}

/// One message per lone task and one per task group (by executor id), in the order the
/// tasks come.
pub fn messages(
    framework_id: &FrameworkId,
    info: Option<pb::FrameworkInfo>,
    tasks: Vec<pb::TaskInfo>,
) -> Vec<Msg> {
    let mut out: Vec<Msg> = Vec::new();
    for task in tasks {
        if !in_group(&task) {
            out.push(Msg::RunTask(pb::master_message::RunTask {
                framework_id: Some(framework_id.clone()),
                framework_info: info.clone(),
                task: Some(task),
            }));
            continue;
        }
        let executor = task.executor.clone();
        let id = executor.as_ref().and_then(|e| e.executor_id.clone());
        let existing = out.iter_mut().find_map(|m| match m {
            Msg::RunTaskGroup(g)
                if g.executor.as_ref().and_then(|e| e.executor_id.clone()) == id =>
            {
                g.task_group.as_mut()
            }
            _ => None,
        });
        match existing {
            Some(group) => group.tasks.push(task),
            None => out.push(Msg::RunTaskGroup(pb::master_message::RunTaskGroup {
                framework_id: Some(framework_id.clone()),
                framework_info: info.clone(),
                executor,
                task_group: Some(pb::TaskGroupInfo { tasks: vec![task] }),
            })),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::{ExecutorId, TaskId};

    fn task(id: &str, executor: Option<&str>) -> pb::TaskInfo {
        pb::TaskInfo {
            task_id: Some(TaskId::new(id)),
            executor: executor.map(|e| pb::ExecutorInfo {
                executor_id: Some(ExecutorId::new(e)),
                r#type: Type::Default as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn group_tasks_travel_together_and_lone_tasks_alone() {
        let fw = FrameworkId::new("f");
        let msgs = messages(
            &fw,
            None,
            vec![
                task("a", Some("e1")),
                task("lone", None),
                task("b", Some("e2")),
                task("c", Some("e1")),
            ],
        );
        let shape: Vec<Vec<&str>> = msgs
            .iter()
            .map(|m| match m {
                Msg::RunTask(r) => {
                    vec![r.task.as_ref().unwrap().task_id.as_ref().unwrap().as_str()]
                }
                Msg::RunTaskGroup(g) => g
                    .task_group
                    .as_ref()
                    .unwrap()
                    .tasks
                    .iter()
                    .map(|t| t.task_id.as_ref().unwrap().as_str())
                    .collect(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(shape, vec![vec!["a", "c"], vec!["lone"], vec!["b"]]);
    }
}

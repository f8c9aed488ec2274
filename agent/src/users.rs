//! Which user a task runs as.
//!
//! A task runs as `CommandInfo.user` when it names one, else as its framework's user
//! (`FrameworkInfo.user`, which the SDK fills with `$USER` by default). The switch itself
//! happens in the supervisor (`setgroups`, `setgid`, `setuid` before the command runs),
//! with the sandbox given to that user first; see `containerizer::process`. It only
//! happens when the agent runs as root: a non-root agent runs every task as itself, and
//! `--switch-user false` makes a root agent do the same. A user that is the agent's own
//! (root, typically) means no switch at all.
//!
//! Tasks that run an image are left alone: their user is looked up in the image's own
//! `/etc/passwd` (`CommandInfo.user`, else the image's `User`), and Docker tasks run as
//! their image says.

use drover_proto::pb;

/// The task as the containerizer should launch it: `CommandInfo.user` filled in from
/// `framework_user` when the task names none, or cleared when `switch_user` is off.
pub fn task_for_launch(
    task: &pb::TaskInfo,
    framework_user: &str,
    switch_user: bool,
) -> pb::TaskInfo {
    let mut task = task.clone();
    let container = task.container.as_ref();
    let docker = container.is_some_and(|c| c.r#type == pb::container_info::Type::Docker as i32);
    if docker || crate::containerizer::linux::image_of(&task).is_some() {
        return task;
    }
    if let Some(command) = task.command.as_mut() {
        if !switch_user {
            command.user.clear();
        } else if command.user.trim().is_empty() {
            command.user = framework_user.trim().to_string();
        }
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(user: &str, container: Option<pb::ContainerInfo>) -> pb::TaskInfo {
        pb::TaskInfo {
            command: Some(pb::CommandInfo {
                value: "id -u".into(),
                shell: true,
                user: user.into(),
                ..Default::default()
            }),
            container,
            ..Default::default()
        }
    }

    fn user_of(t: &pb::TaskInfo) -> &str {
        &t.command.as_ref().unwrap().user
    }

    #[test]
    fn the_framework_user_unless_the_task_names_one() {
        assert_eq!(
            user_of(&task_for_launch(&task("", None), "nobody", true)),
            "nobody"
        );
        assert_eq!(
            user_of(&task_for_launch(&task("daemon", None), "nobody", true)),
            "daemon"
        );
        assert_eq!(user_of(&task_for_launch(&task("", None), "", true)), "");
        // --switch-user false: everything runs as the agent's user.
        assert_eq!(
            user_of(&task_for_launch(&task("daemon", None), "nobody", false)),
            ""
        );
        // Images and Docker decide their own users.
        let image = pb::ContainerInfo {
            r#type: pb::container_info::Type::Linux as i32,
            image: Some(pb::Image { name: "app".into() }),
            ..Default::default()
        };
        assert_eq!(
            user_of(&task_for_launch(&task("", Some(image)), "nobody", true)),
            ""
        );
        let docker = pb::ContainerInfo {
            r#type: pb::container_info::Type::Docker as i32,
            ..Default::default()
        };
        assert_eq!(
            user_of(&task_for_launch(&task("", Some(docker)), "nobody", true)),
            ""
        );
    }
}

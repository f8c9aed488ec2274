//! Task-state helpers shared by master, agent, SDK and CLI.

use crate::pb::TaskState;

/// True for states a task never leaves (Mesos's terminal states).
pub fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::TaskFinished
            | TaskState::TaskFailed
            | TaskState::TaskKilled
            | TaskState::TaskError
            | TaskState::TaskLost
            | TaskState::TaskDropped
            | TaskState::TaskGone
            | TaskState::TaskGoneByOperator
    )
}

/// A short upper-case name for people, e.g. `RUNNING`.
pub fn name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "UNSPECIFIED",
        TaskState::TaskStaging => "STAGING",
        TaskState::TaskStarting => "STARTING",
        TaskState::TaskRunning => "RUNNING",
        TaskState::TaskKilling => "KILLING",
        TaskState::TaskFinished => "FINISHED",
        TaskState::TaskFailed => "FAILED",
        TaskState::TaskKilled => "KILLED",
        TaskState::TaskError => "ERROR",
        TaskState::TaskLost => "LOST",
        TaskState::TaskDropped => "DROPPED",
        TaskState::TaskUnreachable => "UNREACHABLE",
        TaskState::TaskGone => "GONE",
        TaskState::TaskGoneByOperator => "GONE_BY_OPERATOR",
        TaskState::TaskUnknown => "UNKNOWN",
    }
}

/// The state named by an `i32` from the wire, `Unspecified` when unknown.
pub fn from_i32(v: i32) -> TaskState {
    TaskState::try_from(v).unwrap_or(TaskState::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states() {
        assert!(is_terminal(TaskState::TaskFinished));
        assert!(is_terminal(TaskState::TaskLost));
        assert!(!is_terminal(TaskState::TaskRunning));
        assert!(!is_terminal(TaskState::TaskUnreachable));
        assert_eq!(name(from_i32(3)), "RUNNING");
    }
}

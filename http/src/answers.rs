//! Answers every listener shares, so that the master and the agent refuse alike.

use axum::http::StatusCode;
use axum::Router;

/// Body of a `405`: the listeners only read, and axum answers HEAD wherever GET is served.
pub const METHOD_NOT_ALLOWED: &str = "only GET and HEAD are served here\n";

/// Completes `routes` with the answers for a path nobody serves (`404`, naming `paths` so
/// that someone trying with curl sees where to go) and for a method a path does not accept
/// (`405`, with the `Allow` header axum derives from the route).
///
/// Call it after the last route is added: axum attaches the `405` answer to the routes that
/// exist at that moment.
pub fn with_fallbacks<S>(routes: Router<S>, paths: &[&str]) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let hint = format!("not found; try {}\n", one_of(paths));
    routes
        .fallback(move || {
            let hint = hint.clone();
            async move { (StatusCode::NOT_FOUND, hint) }
        })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, METHOD_NOT_ALLOWED)
        })
}

/// "a", "a or b", "a, b or c".
fn one_of(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_paths_like_a_sentence() {
        assert_eq!(one_of(&[]), "");
        assert_eq!(one_of(&["/metrics"]), "/metrics");
        assert_eq!(one_of(&["/metrics", "/health"]), "/metrics or /health");
        assert_eq!(
            one_of(&["/metrics", "/health", "/state"]),
            "/metrics, /health or /state"
        );
    }
}

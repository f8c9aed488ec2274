use std::collections::HashMap;
use std::net::SocketAddr;

use clap::Parser;

use super::*;

const DEMO: Daemon = Daemon {
    name: "demo",
    env_prefix: "DEMO_",
};

/// A daemon's flags in miniature: every kind of flag the layer must carry.
#[derive(Parser, Serialize, Debug, Clone)]
#[command(name = "demo")]
#[serde(rename_all = "kebab-case")]
struct Demo {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:1")]
    listen: SocketAddr,
    /// How many.
    #[arg(long, default_value_t = 3)]
    count: u64,
    /// A ratio.
    #[arg(long, default_value_t = 0.5)]
    ratio: f64,
    /// Peers.
    #[arg(long, value_delimiter = ',', default_value = "a:1")]
    peers: Vec<String>,
    /// A name.
    #[arg(long)]
    name: Option<String>,
    /// A switch.
    #[arg(long)]
    verbose: bool,
    /// A switch that is on unless told.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    enabled: bool,
    /// A flag that had its own environment name before the scheme.
    #[arg(long, env = "OLD_LEVEL", default_value = "info")]
    level: String,
    /// For tests only.
    #[arg(long, hide = true, default_value_t = 1)]
    test_hook: u32,
    #[command(flatten)]
    #[serde(skip)]
    file: FileArgs,
}

struct Case {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            env: HashMap::new(),
        }
    }

    /// Writes `demo.toml` and returns its path.
    fn file(&self, text: &str) -> String {
        let path = self.dir.path().join("demo.toml");
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn env(mut self, name: &str, value: &str) -> Case {
        self.env.insert(name.into(), value.into());
        self
    }

    fn load(&self, args: &[&str]) -> Result<Loaded<Demo>, Error> {
        load::<Demo, _, _>(
            &DEMO,
            std::iter::once("demo").chain(args.iter().copied()),
            |name| self.env.get(name).map(OsString::from),
        )
    }

    fn err(&self, args: &[&str]) -> String {
        match self.load(args) {
            Ok(l) => panic!("{args:?} accepted: {:?}", l.settings),
            Err(e) => e.to_string(),
        }
    }
}

#[test]
fn precedence_is_default_file_env_flag() {
    let c = Case::new();
    let file = c.file("count = 4\nname = \"from-file\"\n");
    let l = c.load(&[]).unwrap();
    assert_eq!(
        (l.settings.count, l.origin("count")),
        (3, Some(&Origin::Default))
    );

    let l = c.load(&["--config", &file]).unwrap();
    assert_eq!(l.settings.count, 4);
    assert_eq!(l.origin("count"), Some(&Origin::File(file.clone().into())));

    let c = c.env("DEMO_COUNT", "5");
    let l = c.load(&["--config", &file]).unwrap();
    assert_eq!(l.settings.count, 5);
    assert_eq!(l.origin("count"), Some(&Origin::Env("DEMO_COUNT".into())));
    assert_eq!(
        l.settings.name.as_deref(),
        Some("from-file"),
        "other keys keep the file's"
    );

    let l = c.load(&["--config", &file, "--count", "6"]).unwrap();
    assert_eq!(l.settings.count, 6);
    assert_eq!(l.origin("count"), Some(&Origin::CommandLine));

    // The file may also be named by the environment.
    let c = Case::new().env("DEMO_CONFIG", &file);
    assert_eq!(c.load(&[]).unwrap().settings.count, 4);
}

#[test]
fn an_older_environment_name_sits_below_the_scheme() {
    let c = Case::new();
    let file = c.file("level = \"warn\"\n");
    let c = c.env("OLD_LEVEL", "debug");
    let l = c.load(&["--config", &file]).unwrap();
    assert_eq!(l.settings.level, "debug");
    assert_eq!(l.origin("level"), Some(&Origin::Env("OLD_LEVEL".into())));
    let c = c.env("DEMO_LEVEL", "trace");
    assert_eq!(
        c.load(&["--config", &file]).unwrap().settings.level,
        "trace"
    );
    assert_eq!(
        c.load(&["--config", &file, "--level", "error"])
            .unwrap()
            .settings
            .level,
        "error"
    );
}

#[test]
fn every_kind_of_value_comes_from_a_file() {
    let c = Case::new();
    let file = c.file(
        "listen = \"0.0.0.0:7\"\nratio = 2\npeers = [\"x:1\", \"y:2\"]\nverbose = true\nenabled = false\n",
    );
    let s = c.load(&["--config", &file]).unwrap().settings;
    assert_eq!(s.listen, "0.0.0.0:7".parse().unwrap());
    assert_eq!(s.ratio, 2.0, "an integer is a fine float");
    assert_eq!(s.peers, ["x:1", "y:2"]);
    assert!(s.verbose && !s.enabled);

    // A list also as one delimited string, as the flag takes it; a flag still wins.
    let file = c.file("peers = \"x:1,y:2,z:3\"\nverbose = false\n");
    let s = c.load(&["--config", &file, "--verbose"]).unwrap().settings;
    assert_eq!(s.peers, ["x:1", "y:2", "z:3"]);
    assert!(s.verbose);
    let c = c.env("DEMO_PEERS", "e:1,f:2");
    assert_eq!(
        c.load(&["--config", &file]).unwrap().settings.peers,
        ["e:1", "f:2"]
    );
}

#[test]
fn unknown_keys_and_bad_values_are_refused_naming_file_and_key() {
    let c = Case::new();
    let file = c.file("listne = \"127.0.0.1:2\"\n");
    assert_eq!(
        c.err(&["--config", &file]),
        format!("{file}: key \"listne\": unknown key (did you mean \"listen\"?)")
    );
    let file = c.file("frobnicate = 1\n");
    assert_eq!(
        c.err(&["--config", &file]),
        format!("{file}: key \"frobnicate\": unknown key")
    );
    for (text, key, reason) in [
        (
            "count = \"5x\"",
            "count",
            "invalid value \"5x\": invalid digit",
        ),
        ("count = -1", "count", "invalid value \"-1\""),
        (
            "listen = 5050",
            "listen",
            "invalid value \"5050\": invalid socket address",
        ),
        ("enabled = \"yes\"", "enabled", "invalid value \"yes\""),
        ("count = [1, 2]", "count", "takes one value, not a list"),
        ("peers = [[\"a\"]]", "peers", "a list of plain values only"),
        (
            "[listen]\nport = 1",
            "listen",
            "takes a string, number or boolean",
        ),
        ("test-hook = 2", "test-hook", "only a command-line flag"),
        (
            "config = \"other.toml\"",
            "config",
            "only a command-line flag",
        ),
    ] {
        let file = c.file(text);
        let err = c.err(&["--config", &file]);
        assert!(
            err.starts_with(&format!("{file}: key \"{key}\": {reason}")),
            "{text:?}: {err}"
        );
    }
    // Every problem at once, one per line.
    let file = c.file("count = \"x\"\nlisten = \"nowhere\"\nbogus = 1\n");
    assert_eq!(c.err(&["--config", &file]).lines().count(), 3);

    let c = c.env("DEMO_COUNT", "lots");
    let err = c.err(&[]);
    assert!(
        err.starts_with("environment variable DEMO_COUNT (key \"count\"): invalid value \"lots\""),
        "{err}"
    );
}

#[test]
fn unreadable_and_malformed_files_are_refused_naming_the_file() {
    let c = Case::new();
    let missing = c.dir.path().join("missing.toml");
    let err = c.err(&["--config", missing.to_str().unwrap()]);
    assert!(
        err.starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );
    let file = c.file("count = \n");
    let err = c.err(&["--config", &file]);
    assert!(
        err.starts_with(&format!("{file}: not a valid TOML file")),
        "{err}"
    );
    assert!(err.contains("line 1"), "{err}");
    assert!(matches!(c.load(&["--bogus"]), Err(Error::CommandLine(_))));
    assert!(matches!(c.load(&["--help"]), Err(Error::CommandLine(_))));
}

#[test]
fn print_config_reads_back_to_the_same_settings() {
    let c = Case::new();
    let file = c.file("count = 9\npeers = [\"p:1\", \"q:2\"]\n");
    let c = c.env("DEMO_RATIO", "0.125").env("OLD_LEVEL", "debug");
    let first = c
        .load(&[
            "--config",
            &file,
            "--name",
            "n \"quoted\"",
            "--verbose",
            "--enabled",
            "false",
        ])
        .unwrap();
    let printed = first.to_toml().unwrap();
    assert!(printed.contains("count = 9  # from "), "{printed}");
    assert!(
        !printed.contains("For tests only."),
        "hidden flags stay out: {printed}"
    );

    let again = Case::new();
    let path = again.file(&printed);
    let second = again.load(&["--config", &path]).unwrap();
    assert_eq!(
        toml::Table::try_from(&first.settings).unwrap(),
        toml::Table::try_from(&second.settings).unwrap(),
        "{printed}"
    );
    assert_eq!(
        second.to_toml().unwrap().lines().count(),
        printed.lines().count()
    );

    // An optional setting without a value is shown, commented out, and reads back unset.
    let printed = Case::new().load(&[]).unwrap().to_toml().unwrap();
    assert!(printed.contains("\n# name = (not set)\n"), "{printed}");
    let path = again.file(&printed);
    assert_eq!(
        again.load(&["--config", &path]).unwrap().settings.name,
        None
    );
}

#[test]
fn help_names_the_environment_variables() {
    let (mut cmd, settings) = command::<Demo>(&DEMO);
    let help = cmd.render_long_help().to_string();
    assert!(help.contains("DEMO_COUNT"), "{help}");
    assert!(help.contains("DEMO_LEVEL"), "{help}");
    assert!(!help.contains("DEMO_TEST_HOOK"));
    assert_eq!(
        keys::<Demo>(&DEMO),
        ["listen", "count", "ratio", "peers", "name", "verbose", "enabled", "level"]
    );
    assert_eq!(settings[7].older_env.as_deref(), Some("OLD_LEVEL"));
}

#[test]
fn only_the_given_environment_is_read() {
    // The process's own variables must not leak in behind the `env` the caller passes
    // (the daemons pass the process's; tests pass their own). No other test reads ratio
    // from the environment, so setting it here disturbs none of them.
    std::env::set_var("DEMO_RATIO", "0.9");
    let l = Case::new().load(&[]).unwrap();
    std::env::remove_var("DEMO_RATIO");
    assert_eq!(l.settings.ratio, 0.5);
    assert_eq!(l.origin("ratio"), Some(&Origin::Default));
}

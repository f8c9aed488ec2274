//! `drover-config`: the one configuration layer of `drover-master` and `drover-agent`.
//!
//! A daemon declares each setting once, as a field of one struct that derives clap's
//! `Parser` (the flag, its default, its help) and serde's `Serialize` (for
//! `--print-config`, with `#[serde(rename_all = "kebab-case")]`), and flattens
//! [`FileArgs`] into it. [`load`] then takes each setting from the highest layer that has
//! it:
//!
//! 1. the built-in default (the flag's `default_value`);
//! 2. the TOML file named by `--config FILE` (or by `<PREFIX>CONFIG`);
//! 3. the environment: first the older name a flag had before this scheme, if any (the
//!    agent's `DROVER_MASTER`, the master's `DROVER_LOG`, kept working), then
//!    `<PREFIX><KEY>`, e.g. `DROVER_AGENT_WORK_DIR`;
//! 4. the command line.
//!
//! Names: a file key is the flag's long name (kebab-case, `--work-dir` is `work-dir`), in
//! one flat table, as `--help` lists them; the environment name is the daemon's prefix and
//! the key in upper case with `_` for `-`. So a new flag is in the file, the environment
//! and `--print-config` as soon as it is a field of the struct.
//!
//! Flag-only, on purpose: hidden flags (test hooks, e.g. a status-update retry interval or a
//! registry version cap, which an operator's file must not pin), `--config` and
//! `--print-config` themselves, `--help`/`--version`, and the flags of subcommands (the
//! file configures the serving daemon). A flag-only key in a file is refused like an
//! unknown one.
//!
//! How: layers 2 and 3 become the default values of a rebuilt clap command, so clap itself
//! applies layer 4 and parses every value with the flag's own parser, whatever its source.
//! Each file and environment value is parsed once beforehand, on its own, so that a bad one
//! is refused naming its file (or variable), its key and the parser's reason, and all such
//! problems are reported together. Checks that span settings (e.g. "`--peers` must name
//! this master") stay in each daemon and run on the merged result, so they hold for values
//! from any layer.
//!
//! Modules: this file is the layer; `testing` (cargo feature `testing`, for the daemons'
//! dev-dependencies only) holds what the daemons' config tests share.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use clap::builder::ValueParser;
use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use serde::Serialize;

/// The naming of one daemon's settings.
#[derive(Clone, Copy, Debug)]
pub struct Daemon {
    /// The binary, e.g. `drover-agent` (for messages and the `--print-config` header).
    pub name: &'static str,
    /// Prefix of every environment name, e.g. `DROVER_AGENT_`.
    pub env_prefix: &'static str,
}

/// The two flags of the layer itself; flatten into the daemon's flag struct (and
/// `#[serde(skip)]` it: neither belongs in a file).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct FileArgs {
    /// Read settings from this TOML file; its keys are the long flag names, e.g.
    /// `work-dir = "/srv/drover"`. Environment variables and flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective settings (defaults, file, environment and flags merged) as a
    /// TOML file that --config accepts, then exit. Bad settings are refused as when
    /// starting.
    #[arg(long)]
    pub print_config: bool,
}

/// Ids of [`FileArgs`]' flags (clap's ids are the field names).
const CONFIG_ID: &str = "config";
const PRINT_CONFIG_ID: &str = "print_config";

/// Why [`load`] refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong, or asks for `--help`/`--version`: `clap::Error::exit`
    /// prints it and exits as clap does (status 2, or 0 for help).
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    /// The config file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML (the message carries the line and column).
    #[error("{}: not a valid TOML file: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// Unknown keys or bad values, in the file or the environment: every one found.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
    /// The effective settings cannot be written as TOML (a path that is not UTF-8, say).
    #[error("cannot print the settings as TOML: {0}")]
    Print(String),
}

impl Error {
    /// Reports the refusal on stderr and exits, as both daemons do: clap's own output and
    /// status for the command line (2, or 0 for `--help`); otherwise one line per problem,
    /// led by the binary's name, and status 2, so that a service manager can tell refused
    /// settings from a crash.
    pub fn exit(self, binary: &str) -> ! {
        match self {
            Error::CommandLine(e) => e.exit(),
            Error::Invalid(problems) => {
                for p in &problems {
                    eprintln!("{binary}: {p}");
                }
            }
            other => eprintln!("{binary}: {other}"),
        }
        std::process::exit(2)
    }
}

/// One refused key or value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where the key was given.
    pub origin: Origin,
    /// The key (for an environment variable, the key it stands for).
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File(path) => write!(
                f,
                "{}: key \"{}\": {}",
                path.display(),
                self.key,
                self.reason
            ),
            Origin::Env(name) => write!(
                f,
                "environment variable {name} (key \"{}\"): {}",
                self.key, self.reason
            ),
            other => write!(f, "{other}: key \"{}\": {}", self.key, self.reason),
        }
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The layer a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    /// The variable's name.
    Env(String),
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(path) => write!(f, "from {}", path.display()),
            Origin::Env(name) => write!(f, "from {name}"),
            Origin::CommandLine => write!(f, "from the command line"),
        }
    }
}

/// A setting that a file and the environment may give.
#[derive(Clone, Debug)]
struct Setting {
    /// clap's id (the field name).
    id: String,
    /// The file key: the long flag name.
    key: String,
    env: String,
    /// The environment name the flag had before the scheme, below `env`.
    older_env: Option<String>,
    /// Takes a list: `Some(delimiter)` when a single string may also carry several.
    list: Option<Option<char>>,
    parser: ValueParser,
    help: String,
}

impl Setting {
    fn of(arg: &Arg, daemon: &Daemon) -> Option<Setting> {
        let key = arg.get_long()?;
        let id = arg.get_id().as_str();
        let valued = matches!(
            arg.get_action(),
            ArgAction::Set | ArgAction::Append | ArgAction::SetTrue | ArgAction::SetFalse
        );
        if !valued || arg.is_hide_set() || [CONFIG_ID, PRINT_CONFIG_ID].contains(&id) {
            return None;
        }
        let env = format!(
            "{}{}",
            daemon.env_prefix,
            key.to_ascii_uppercase().replace('-', "_")
        );
        let older_env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .filter(|e| *e != env);
        let many = matches!(arg.get_action(), ArgAction::Append)
            || arg.get_value_delimiter().is_some()
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        Some(Setting {
            id: id.to_string(),
            key: key.to_string(),
            env,
            older_env,
            list: many.then(|| arg.get_value_delimiter()),
            parser: arg.get_value_parser().clone(),
            help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
        })
    }

    /// The values of `text` (a file string or an environment variable) for this setting.
    fn split(&self, text: OsString) -> Vec<OsString> {
        match (self.list, text.to_str()) {
            (Some(Some(d)), Some(s)) => s.split(d).map(OsString::from).collect(),
            _ => vec![text],
        }
    }

    /// Parses one value with the flag's own parser; `Err` holds the parser's reason.
    fn check(&self, value: &OsStr) -> Result<(), String> {
        // A one-flag command around the same parser: clap keeps its parsers' entry point
        // private, and the daemon's own command would drag in conflicts and requirements.
        let probe = Command::new("probe").no_binary_name(true).arg(
            Arg::new("v")
                .long("v")
                .num_args(1)
                .action(ArgAction::Set)
                .allow_hyphen_values(true)
                .value_parser(self.parser.clone()),
        );
        match probe.try_get_matches_from([OsStr::new("--v"), value]) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "invalid value \"{}\": {}",
                value.to_string_lossy(),
                parser_reason(&e)
            )),
        }
    }
}

fn parser_reason(e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        if !valid.is_empty() {
            return format!("expected one of {}", valid.join(", "));
        }
    }
    e.kind().to_string()
}

/// The daemon's command with every setting's environment name attached (so `--help` shows
/// it and clap reads it), and the settings themselves in `--help` order.
fn command<T: CommandFactory>(daemon: &Daemon) -> (Command, Vec<Setting>) {
    let cmd = T::command();
    let settings: Vec<Setting> = cmd
        .get_arguments()
        .filter_map(|a| Setting::of(a, daemon))
        .collect();
    let cmd = cmd.mut_args(
        |a| match settings.iter().find(|s| s.id == a.get_id().as_str()) {
            Some(s) => a.env(s.env.clone()),
            None => a,
        },
    );
    (cmd, settings)
}

/// The file keys of `T`, in `--help` order (for tests and docs).
pub fn keys<T: CommandFactory>(daemon: &Daemon) -> Vec<String> {
    command::<T>(daemon).1.into_iter().map(|s| s.key).collect()
}

/// Settings merged from every layer, and where each came from.
pub struct Loaded<T> {
    pub settings: T,
    daemon: Daemon,
    /// (setting, origin), in `--help` order.
    origins: Vec<(Setting, Origin)>,
}

impl<T> Loaded<T> {
    /// Where the setting with this file key came from; `None` for a flag-only key.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins
            .iter()
            .find(|(s, _)| s.key == key)
            .map(|(_, o)| o)
    }
}

impl<T: Serialize> Loaded<T> {
    /// The effective settings as a TOML file that [`load`] reads back to the same
    /// settings: each key under its flag's help, with the layer it came from. A setting
    /// without a value (an optional flag not given) is shown as a comment.
    pub fn to_toml(&self) -> Result<String, Error> {
        let table =
            toml::Table::try_from(&self.settings).map_err(|e| Error::Print(e.to_string()))?;
        let mut out = format!(
            "# Effective settings of {}: built-in defaults < this file (--config) <\n\
             # environment ({}<KEY>) < command-line flags. Keys are the long flag names.\n",
            self.daemon.name, self.daemon.env_prefix
        );
        for (setting, origin) in &self.origins {
            out.push('\n');
            for line in wrap(&setting.help, 88) {
                out.push_str("# ");
                out.push_str(&line);
                out.push('\n');
            }
            match table.get(&setting.key) {
                Some(value) => {
                    out.push_str(&format!("{} = {value}  # {origin}\n", setting.key));
                }
                None => out.push_str(&format!("# {} = (not set)\n", setting.key)),
            }
        }
        Ok(out)
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Parses `args` (the binary's name first, as from `std::env::args_os()`) over the config
/// file and the environment, as the module docs describe. `env` reads a variable
/// (`|name| std::env::var_os(name)`; tests pass their own).
pub fn load<T, I, A>(
    daemon: &Daemon,
    args: I,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Loaded<T>, Error>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = A>,
    A: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let (cmd, settings) = command::<T>(daemon);
    // First pass, for the file's name: a wrong command line, --help and --version end
    // here. Without the environment, whose values are checked below with better messages
    // than clap's (which name the flag, not the variable).
    let bare = cmd.clone().mut_args(|a| {
        if settings.iter().any(|s| s.id == a.get_id().as_str()) {
            a.env(None::<&'static str>)
        } else {
            a
        }
    });
    let first = match bare.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        // The same error, from the command whose help names the variables.
        Err(e) => return Err(cmd.try_get_matches_from(&args).err().unwrap_or(e).into()),
    };
    let file = match first.value_source(CONFIG_ID) {
        Some(ValueSource::CommandLine) => first.get_one::<PathBuf>(CONFIG_ID).cloned(),
        _ => env(&format!("{}CONFIG", daemon.env_prefix))
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    };

    let mut layered: BTreeMap<String, (Vec<OsString>, Origin)> = BTreeMap::new();
    let mut problems = Vec::new();
    if let Some(path) = &file {
        for (key, value) in read_table(path)? {
            match from_file(&settings, &cmd, path, &key, value) {
                Ok((id, values)) => {
                    layered.insert(id, (values, Origin::File(path.clone())));
                }
                Err(p) => problems.push(p),
            }
        }
    }
    for s in &settings {
        for name in s.older_env.iter().chain([&s.env]) {
            let Some(text) = env(name) else { continue };
            let values = s.split(text);
            let mut ok = true;
            for v in &values {
                if let Err(reason) = s.check(v) {
                    problems.push(Problem {
                        origin: Origin::Env(name.clone()),
                        key: s.key.clone(),
                        reason,
                    });
                    ok = false;
                }
            }
            if ok {
                layered.insert(s.id.clone(), (values, Origin::Env(name.clone())));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }

    // The last pass is the bare command too: every environment value already came through
    // `env` into `layered`, and clap must not read the process's own variables behind the
    // caller's back (tests pass their own `env`).
    let mut cmd = bare;
    for (id, (values, _)) in &layered {
        cmd = cmd.mut_arg(id, |a| a.default_values(values.clone()));
    }
    let matches = cmd.try_get_matches_from(&args)?;
    let parsed = T::from_arg_matches(&matches)?;
    let origins = settings
        .into_iter()
        .map(|s| {
            let origin = origin_of(&matches, &s, &layered);
            (s, origin)
        })
        .collect();
    Ok(Loaded {
        settings: parsed,
        daemon: *daemon,
        origins,
    })
}

fn origin_of(
    matches: &ArgMatches,
    s: &Setting,
    layered: &BTreeMap<String, (Vec<OsString>, Origin)>,
) -> Origin {
    match matches.value_source(&s.id) {
        Some(ValueSource::CommandLine) => Origin::CommandLine,
        _ => layered
            .get(&s.id)
            .map(|(_, o)| o.clone())
            .unwrap_or(Origin::Default),
    }
}

fn read_table(path: &Path) -> Result<toml::Table, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| Error::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Checks one file entry; `Ok((id, values))` for the command's default values.
fn from_file(
    settings: &[Setting],
    cmd: &Command,
    path: &Path,
    key: &str,
    value: toml::Value,
) -> Result<(String, Vec<OsString>), Problem> {
    let problem = |reason: String| Problem {
        origin: Origin::File(path.to_path_buf()),
        key: key.to_string(),
        reason,
    };
    let Some(s) = settings.iter().find(|s| s.key == key) else {
        let flag_only = cmd.get_arguments().any(|a| a.get_long() == Some(key));
        return Err(problem(if flag_only {
            "only a command-line flag, not a setting of the file".to_string()
        } else {
            unknown_key(settings, key)
        }));
    };
    let values = match value {
        toml::Value::Array(items) => {
            if s.list.is_none() {
                return Err(problem("takes one value, not a list".into()));
            }
            items
                .into_iter()
                .map(|v| scalar(v).ok_or_else(|| problem("a list of plain values only".into())))
                .collect::<Result<Vec<_>, _>>()?
        }
        other => match scalar(other) {
            Some(text) => s.split(text),
            None => {
                return Err(problem(
                    "takes a string, number or boolean (keys are flat: no tables)".into(),
                ))
            }
        },
    };
    for v in &values {
        s.check(v).map_err(&problem)?;
    }
    Ok((s.id.clone(), values))
}

/// A TOML scalar as the text a flag would take.
fn scalar(value: toml::Value) -> Option<OsString> {
    Some(OsString::from(match value {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => return None,
    }))
}

fn unknown_key(settings: &[Setting], key: &str) -> String {
    let best = settings
        .iter()
        .map(|s| (strsim::jaro_winkler(key, &s.key), &s.key))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, k)) => format!("unknown key (did you mean \"{k}\"?)"),
        None => "unknown key".to_string(),
    }
}

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(test)]
mod tests;

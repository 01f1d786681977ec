//! From a command line, an environment and an optional config file to a checked
//! [`NodeConfig`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgMatches, Command, CommandFactory, FromArgMatches, Parser};

use super::{ConfigError, NodeConfig, RawConfig};

// The `dynamo-node` command line: the settings plus what to do with them. The doc
// comment below is its --help text.
/// A Dynamo-style storage node (DeCandia et al., SOSP 2007).
///
/// Every setting is a flag, a DYNAMO_* environment variable and a key of the YAML
/// config file, with the same name. Precedence: flag > environment > file > default.
#[derive(Debug, Parser)]
#[command(name = "dynamo-node", version)]
struct Cli {
    /// YAML file with the same keys as the flags (flags and environment override it).
    #[arg(long, env = "DYNAMO_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration as YAML (admin-token redacted) and exit: 0 if
    /// it is valid, 2 with the reason if not.
    #[arg(long)]
    check_config: bool,

    #[command(flatten)]
    settings: RawConfig,
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invocation {
    /// The checked configuration.
    pub config: NodeConfig,
    /// `--check-config`: print the configuration and exit instead of running.
    pub check_config: bool,
}

/// Parses `args` (program name first), the environment variables `env` returns, and
/// the config file they name, and checks the result.
///
/// Precedence per key: flag > `DYNAMO_*` variable > config file > default. A list
/// (`seeds`) comes whole from the highest layer that sets it. Variables other than the
/// ones `--help` lists are never looked up, so unrelated `DYNAMO_*`
/// variables (Kubernetes adds `<SERVICE>_PORT` ones for every Service) do no harm.
///
/// `env` replaces the process environment, so callers (and tests) decide what is
/// visible: the binary passes a lookup of `std::env::var_os`. The only I/O here is
/// reading the config file.
///
/// # Errors
/// [`ConfigError::Args`] for a refused command line and for `--help` and `--version`
/// (print it, exit with its code); [`ConfigError::Env`] for a variable whose value
/// does not parse; [`ConfigError::ReadFile`] and [`ConfigError::File`] for the config
/// file; any other [`ConfigError`] for a configuration that does not pass validation.
pub fn load_from_args<I, T>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = command();
    let flags = parse(command.clone(), args).map_err(ConfigError::Args)?;
    let from_env = parse_env(&command, env)?;
    let file = match flags.config.as_ref().or(from_env.config.as_ref()) {
        Some(path) => read_file(path)?,
        None => RawConfig::default(),
    };
    let raw = flags.settings.or(from_env.settings).or(file);
    Ok(Invocation {
        config: NodeConfig::try_from(raw)?,
        check_config: flags.check_config,
    })
}

/// The `dynamo-node` command, with clap's own environment lookup replaced.
///
/// clap reads the process environment itself (when an `Arg` is built, and again when
/// parsing); the loader must read only the `env` it is given. So each argument's
/// variable is removed from the `Arg` and named in its help text instead, and
/// [`parse_env`] feeds the variables through the same parser.
fn command() -> Command {
    Cli::command().mut_args(|arg| match arg.get_env().map(|v| v.to_owned()) {
        None => arg,
        Some(var) => {
            let note = format!("[env: {}]", var.to_string_lossy());
            let help = arg
                .get_help()
                .map_or_else(|| note.clone(), |help| format!("{help} {note}"));
            let long_help = arg.get_long_help().map(|help| format!("{help}\n\n{note}"));
            let arg = arg.env(None).help(help);
            match long_help {
                Some(long_help) => arg.long_help(long_help),
                None => arg,
            }
        }
    })
}

fn parse<I, T>(command: Command, args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches: ArgMatches = command.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// The settings given by environment variables: each set variable is parsed on its
/// own as `--<flag>=<value>`, so a bad value is reported with the variable's name.
fn parse_env(command: &Command, env: &dyn Fn(&str) -> Option<String>) -> Result<Cli, ConfigError> {
    let mut layer = parse(command.clone(), ["dynamo-node"]).map_err(ConfigError::Args)?;
    for (var, flag) in Cli::command().get_arguments().filter_map(env_var_and_flag) {
        let Some(value) = env(&var) else { continue };
        let single = parse(
            command.clone(),
            ["dynamo-node".to_owned(), format!("--{flag}={value}")],
        )
        .map_err(|e| ConfigError::Env {
            var: var.clone(),
            message: summary(&e),
        })?;
        layer.config = single.config.or(layer.config);
        layer.settings = single.settings.or(layer.settings);
    }
    Ok(layer)
}

/// An argument's environment variable and long flag, if it has both.
fn env_var_and_flag(arg: &Arg) -> Option<(String, String)> {
    let var = arg.get_env()?.to_str()?.to_owned();
    let flag = arg.get_long()?.to_owned();
    Some((var, flag))
}

/// A clap error on one line, without its `error: ` prefix and the usage hint after
/// the first blank line; the possible values of an enum stay.
fn summary(error: &clap::Error) -> String {
    let text = error.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}

fn read_file(path: &PathBuf) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::ReadFile {
        path: path.clone(),
        error,
    })?;
    RawConfig::from_yaml(&text).map_err(|error| ConfigError::File {
        path: path.clone(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(
        args: &[&str],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Invocation, ConfigError> {
        let argv = std::iter::once("dynamo-node").chain(args.iter().copied());
        load_from_args(argv, env)
    }

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    const BASE: [&str; 4] = ["--node-id", "n1", "--storage", "memory"];

    #[test]
    fn flags_alone_give_a_config_with_defaults() {
        let invocation = load(&BASE, &no_env).unwrap();
        assert!(!invocation.check_config);
        let config = invocation.config;
        assert_eq!(config.node_id().as_str(), "n1");
        assert_eq!(config.read_quorum(), 2);
        assert!(
            load(&[&BASE[..], &["--check-config"]].concat(), &no_env)
                .unwrap()
                .check_config
        );
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file =
            yaml_file("node-id: n1\nstorage: memory\nlog: file\nweight: 3\ngossip-interval: 3s\n");
        let path = file.path().to_str().unwrap();
        let env = env_of(&[("DYNAMO_LOG", "env"), ("DYNAMO_WEIGHT", "2")]);
        let config = load(&["--config", path, "--log", "flag"], &env)
            .unwrap()
            .config;
        assert_eq!(config.log(), "flag"); // flag, env and file set it
        assert_eq!(config.weight(), 2); // env and file set it
        assert_eq!(config.gossip_interval(), std::time::Duration::from_secs(3)); // file only
        assert_eq!(
            config.request_timeout(),
            super::super::DEFAULT_REQUEST_TIMEOUT
        );
    }

    #[test]
    fn seeds_come_whole_from_the_highest_layer() {
        let env = env_of(&[("DYNAMO_SEEDS", "a:7001,b:7001")]);
        let from_env = load(&BASE, &env).unwrap().config;
        assert_eq!(from_env.seeds(), ["a:7001", "b:7001"]);
        let from_flags = load(
            &[&BASE[..], &["--seeds", "c:7001", "--seeds", "d:7001"]].concat(),
            &env,
        )
        .unwrap()
        .config;
        assert_eq!(from_flags.seeds(), ["c:7001", "d:7001"]);
    }

    #[test]
    fn config_file_path_can_come_from_env() {
        let file = yaml_file("node-id: from-file\nstorage: memory\n");
        let env = env_of(&[("DYNAMO_CONFIG", file.path().to_str().unwrap())]);
        let config = load(&[], &env).unwrap().config;
        assert_eq!(config.node_id().as_str(), "from-file");
    }

    #[test]
    fn process_environment_is_not_consulted() {
        // PATH is always set, but is not a DYNAMO_* variable; and no DYNAMO_NODE_ID
        // reaches the loader unless the lookup returns it.
        let err = load(&["--storage", "memory"], &no_env).unwrap_err();
        assert!(
            matches!(err, ConfigError::Missing { key: "node-id" }),
            "{err}"
        );
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let env = env_of(&[("DYNAMO_READ_QUORUM", "two")]);
        let err = load(&BASE, &env).unwrap_err();
        let ConfigError::Env { var, .. } = &err else {
            panic!("expected an env error, got {err}")
        };
        assert_eq!(var, "DYNAMO_READ_QUORUM");
        assert!(err.to_string().contains("two"), "{err}");

        let env = env_of(&[("DYNAMO_STORAGE", "rocksdb")]);
        let message = load(&["--node-id", "n1"], &env).unwrap_err().to_string();
        assert!(message.contains("DYNAMO_STORAGE"), "{message}");
        assert!(
            message.contains("sled") && message.contains("memory"),
            "{message}"
        );
    }

    #[test]
    fn env_value_starting_with_a_dash_is_a_value() {
        let env = env_of(&[("DYNAMO_LOG", "-weird")]);
        assert_eq!(load(&BASE, &env).unwrap().config.log(), "-weird");
    }

    #[test]
    fn unknown_flag_and_bad_enum_are_argument_errors() {
        let err = load(&[&BASE[..], &["--replicas", "3"]].concat(), &no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Args(_)), "{err}");
        let err = load(&["--node-id", "n1", "--durability", "maybe"], &no_env).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("sync") && message.contains("buffered"),
            "{message}"
        );
    }

    #[test]
    fn help_and_version_are_reported_as_argument_errors_with_exit_code_zero() {
        for flag in ["--help", "--version"] {
            let Err(ConfigError::Args(e)) = load(&[flag], &no_env) else {
                panic!("{flag} should stop parsing")
            };
            assert_eq!(e.exit_code(), 0, "{flag}");
        }
        let Err(ConfigError::Args(help)) = load(&["--help"], &no_env) else {
            unreachable!()
        };
        let help = help.to_string();
        assert!(help.contains("--read-quorum <R>"), "{help}");
        assert!(help.contains("[env: DYNAMO_READ_QUORUM]"), "{help}");
        assert!(help.contains("--check-config"), "{help}");
    }

    #[test]
    fn unknown_file_key_is_named() {
        let file = yaml_file("node-id: n1\nstorage: memory\nread-qorum: 1\n");
        let err = load(&["--config", file.path().to_str().unwrap()], &no_env).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("read-qorum"), "{err}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.yaml");
        let err = load(&["--config", path.to_str().unwrap()], &no_env).unwrap_err();
        assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
        assert!(err.to_string().contains("absent.yaml"), "{err}");
    }

    #[test]
    fn every_setting_has_a_flag_a_variable_and_a_key_of_one_name() {
        let command = Cli::command();
        let flags: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(str::to_owned))
            .collect();
        for arg in command.get_arguments() {
            let Some(flag) = arg.get_long() else { continue };
            if flag == "check-config" {
                assert!(arg.get_env().is_none());
                continue;
            }
            let expected = format!("DYNAMO_{}", flag.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|v| v.to_str()),
                Some(&*expected),
                "{flag}"
            );
        }
        // A config with every key set serializes to exactly the flag names.
        let file = yaml_file(
            "node-id: n1\ndata-dir: /d\nhttp-listen: 127.0.0.1:9000\nadmin-token: t\nadvertise: n1:7001\nadvertise-client: n1:7000\nzone: eu-1\n\
             tls-cert: c\ntls-key: k\ntls-ca: ca\ntls-node-name: dn\npartitioning: random-tokens\n\
             internode-token-file: /t\ninsecure-internode: true\n",
        );
        let config = load(&["--config", file.path().to_str().unwrap()], &no_env)
            .unwrap()
            .config;
        let mut raw = config.to_raw();
        raw.partitions = Some(8); // the other strategy's parameter, for the key list
        let yaml: serde_yaml::Mapping = serde_yaml::to_value(&raw)
            .and_then(serde_yaml::from_value)
            .unwrap();
        let mut keys: Vec<String> = yaml
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        keys.push("config".to_owned());
        keys.push("check-config".to_owned());
        keys.sort();
        let mut flags = flags;
        flags.sort();
        assert_eq!(keys, flags);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Precedence for one key over every combination of layers.
        #[test]
        fn highest_layer_that_sets_a_key_wins(
            flag in proptest::option::of(1u32..=3),
            env in proptest::option::of(1u32..=3),
            file in proptest::option::of(1u32..=3),
        ) {
            let yaml = match file {
                Some(r) => format!("read-quorum: {r}\n"),
                None => String::new(),
            };
            let file_handle = yaml_file(&yaml);
            let env_text = env.map(|r| r.to_string());
            let lookup = |name: &str| match name {
                "DYNAMO_READ_QUORUM" => env_text.clone(),
                _ => None,
            };
            let flag_text = flag.map(|r| r.to_string());
            let mut args = vec!["--config", file_handle.path().to_str().unwrap()];
            args.extend(BASE);
            if let Some(r) = &flag_text {
                args.extend(["--read-quorum", r]);
            }
            let config = load(&args, &lookup).unwrap().config;
            let expected = flag.or(env).or(file).unwrap_or(super::super::DEFAULT_READ_QUORUM);
            prop_assert_eq!(config.read_quorum(), expected as usize);
        }
    }
}

//! The layering of [`super::parse`] on a small command tree shaped like
//! `baton`'s (a daemon, a client command with a context, root connection flags).

use std::ffi::OsString;
use std::path::Path;

use clap::{Arg, ArgAction, Command, value_parser};

use super::*;

/// `PATH` is set in every test process: the one environment variable these
/// tests can rely on without setting one.
const ENV_VAR: &str = "PATH";

fn tree() -> Command {
    let daemon = Command::new("agent")
        .arg(
            Arg::new("listen")
                .long("listen")
                .default_value("127.0.0.1:7400"),
        )
        .arg(Arg::new("data_dir").long("data-dir").default_value("data"))
        .arg(
            Arg::new("slots")
                .long("slots")
                .value_parser(value_parser!(u32)),
        )
        .arg(Arg::new("labels").long("label").action(ArgAction::Append))
        .arg(
            Arg::new("insecure")
                .long("insecure")
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("enroll")
                .long("enroll")
                .env("BATON_TEST_NEVER_SET_ENROLL")
                .hide_env_values(true),
        )
        .arg(Arg::new("search").long("search").env(ENV_VAR))
        .arg(
            Arg::new("param")
                .short('p')
                .long("param")
                .action(ArgAction::Append),
        );
    let list = Command::new("list")
        .arg(
            Arg::new("url")
                .long("coordinator")
                .default_value("https://127.0.0.1:7400"),
        )
        .arg(
            Arg::new("tls_dir")
                .long("tls-dir")
                .default_value("baton-data/tls/admin"),
        )
        .arg(Arg::new("token_file").long("token-file"))
        .arg(Arg::new(CONTEXT_ARG).long("context"))
        .arg(Arg::new("output").long("output").default_value("human"));
    let validate = Command::new("validate").arg(Arg::new("file").required(true));
    let root = Command::new("baton")
        .arg(
            Arg::new(CONFIG_ARG)
                .long("config")
                .global(true)
                .value_parser(value_parser!(std::path::PathBuf)),
        )
        .arg(
            Arg::new(PRINT_CONFIG_ARG)
                .long("print-config")
                .global(true)
                .action(ArgAction::SetTrue),
        )
        .arg(Arg::new("root_coordinator").long("coordinator"))
        .subcommand(daemon)
        .subcommand(Command::new("exec").subcommand(list))
        .subcommand(validate);
    decorate(root)
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn env(&self) -> impl Fn(&str) -> Option<OsString> + '_ {
        move |k: &str| (k == "BATON_CONFIG_DIR").then(|| self.dir.path().as_os_str().to_owned())
    }

    fn parse(&self, args: &[&str]) -> Result<Parsed, ParseError> {
        let argv = std::iter::once("baton")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(tree(), argv, &self.env())
    }

    fn ok(&self, args: &[&str]) -> Parsed {
        match self.parse(args) {
            Ok(p) => p,
            Err(ParseError::Clap(e)) => panic!("clap: {e}"),
            Err(ParseError::Cli(e)) => panic!("{}: {}", e.code, e.message),
        }
    }

    fn err(&self, args: &[&str]) -> CliError {
        match self.parse(args) {
            Ok(p) => panic!("parsed: {:?}", p.settings),
            Err(ParseError::Clap(e)) => panic!("clap: {e}"),
            Err(ParseError::Cli(e)) => e,
        }
    }
}

fn setting<'p>(p: &'p Parsed, key: &str) -> &'p Setting {
    p.settings
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("no setting {key}"))
}

fn value(p: &Parsed, key: &str) -> Vec<String> {
    setting(p, key).values.clone().unwrap_or_default()
}

#[test]
fn defaults_then_file_then_environment_then_flags() {
    let fx = Fixture::new();
    let cfg = fx.file(
        "d.toml",
        "data-dir = \"/srv/baton\"\nslots = 4\nlabel = [\"pool=etl\", \"zone=a\"]\ninsecure = true\nsearch = \"from-file\"\n",
    );
    let path = std::path::PathBuf::from(&cfg);

    let p = fx.ok(&["agent", "--config", &cfg]);
    assert_eq!(value(&p, "listen"), ["127.0.0.1:7400"]);
    assert_eq!(setting(&p, "listen").source, Source::Default);
    assert_eq!(value(&p, "data-dir"), ["/srv/baton"]);
    assert_eq!(setting(&p, "data-dir").source, Source::File(path.clone()));
    assert_eq!(value(&p, "slots"), ["4"], "a TOML integer");
    assert_eq!(value(&p, "label"), ["pool=etl", "zone=a"]);
    assert_eq!(
        value(&p, "insecure"),
        ["true"],
        "a TOML boolean sets a flag"
    );
    // The environment is above the file.
    let path_var = std::env::var(ENV_VAR).unwrap();
    assert_eq!(value(&p, "search"), [path_var.as_str()]);
    assert_eq!(setting(&p, "search").source, Source::Env(ENV_VAR.into()));
    let leaf = p.matches.subcommand_matches("agent").unwrap();
    assert_eq!(leaf.get_one::<u32>("slots"), Some(&4), "typed like a flag");
    assert!(leaf.get_flag("insecure"));

    // Flags are above everything.
    let p = fx.ok(&[
        "agent",
        "--config",
        &cfg,
        "--data-dir",
        "/flag",
        "--search",
        "from-flag",
        "--label",
        "only=this",
    ]);
    assert_eq!(value(&p, "data-dir"), ["/flag"]);
    assert_eq!(setting(&p, "data-dir").source, Source::Flag);
    assert_eq!(value(&p, "search"), ["from-flag"]);
    assert_eq!(
        value(&p, "label"),
        ["only=this"],
        "a flag replaces the file's list"
    );

    // `--config` is global: before the subcommand too.
    let p = fx.ok(&["--config", &cfg, "agent"]);
    assert_eq!(value(&p, "data-dir"), ["/srv/baton"]);
    // No file: nothing but defaults.
    let p = fx.ok(&["agent"]);
    assert_eq!(value(&p, "data-dir"), ["data"]);
    assert_eq!(setting(&p, "slots").values, None);
}

#[test]
fn an_unknown_key_names_itself_the_file_and_the_line() {
    let fx = Fixture::new();
    let cfg = fx.file("d.toml", "listen = \"0.0.0.0:1\"\n\ndata_dir = \"/x\"\n");
    let e = fx.err(&["agent", "--config", &cfg]);
    assert_eq!(e.code, "CONFIG_UNKNOWN_KEY");
    assert!(
        e.message.contains(&format!("{cfg}:3")) && e.message.contains("`data_dir`"),
        "{}",
        e.message
    );
    // A daemon's file is its own: a key of another command is an error too.
    let cfg = fx.file("d2.toml", "output = \"json\"\n");
    assert_eq!(
        fx.err(&["agent", "--config", &cfg]).code,
        "CONFIG_UNKNOWN_KEY"
    );
    // A client command shares its file with others: a key another command
    // takes is skipped, a key none takes is an error.
    let cfg = fx.file("c.toml", "output = \"json\"\nslots = 3\n");
    let p = fx.ok(&["exec", "list", "--config", &cfg]);
    assert_eq!(value(&p, "output"), ["json"]);
    // So does a command without a context (validate): only daemons are strict.
    let cfg = fx.file("v.toml", "output = \"json\"\nslots = 3\n");
    fx.ok(&["validate", "x.toml", "--config", &cfg]);
    let cfg = fx.file("c2.toml", "outptu = \"json\"\n");
    assert_eq!(
        fx.err(&["exec", "list", "--config", &cfg]).code,
        "CONFIG_UNKNOWN_KEY"
    );
    // Help and the config options themselves are not keys.
    let cfg = fx.file("c3.toml", "config = \"other.toml\"\n");
    assert_eq!(
        fx.err(&["agent", "--config", &cfg]).code,
        "CONFIG_UNKNOWN_KEY"
    );
}

#[test]
fn bad_files_and_values_are_errors_that_say_where() {
    let fx = Fixture::new();
    let missing = fx.dir.path().join("nope.toml").display().to_string();
    assert_eq!(
        fx.err(&["agent", "--config", &missing]).code,
        "CONFIG_FILE_UNREADABLE"
    );
    let cfg = fx.file("syntax.toml", "listen = \n");
    let e = fx.err(&["agent", "--config", &cfg]);
    assert_eq!(e.code, "CONFIG_FILE_INVALID");
    assert!(e.message.contains(&cfg), "{}", e.message);
    for (text, what) in [
        ("listen = [\"a\", \"b\"]\n", "one value"),
        ("insecure = 3\n", "flag"),
        ("label = [[1]]\n", "list"),
        ("listen = { a = 1 }\n", "string"),
    ] {
        let cfg = fx.file("v.toml", text);
        let e = fx.err(&["agent", "--config", &cfg]);
        assert_eq!(e.code, "CONFIG_BAD_VALUE", "{text}");
        assert!(e.message.contains(what), "{text}: {}", e.message);
    }
    // A value of the right TOML type that the option refuses: clap's own check.
    let cfg = fx.file("v.toml", "slots = \"many\"\n");
    let e = fx.err(&["agent", "--config", &cfg]);
    assert_eq!(e.code, "CONFIG_BAD_VALUE");
    assert!(
        e.message.contains(&cfg) && e.message.contains("many") && !e.message.contains("--help"),
        "{}",
        e.message
    );
}

#[test]
fn connection_flags_before_the_subcommand_go_to_it() {
    let fx = Fixture::new();
    let p = fx.ok(&["--coordinator", "https://a:1", "exec", "list"]);
    assert_eq!(p.path, ["exec", "list"]);
    assert_eq!(value(&p, "coordinator"), ["https://a:1"]);
    assert_eq!(setting(&p, "coordinator").source, Source::Flag);
    let p = fx.ok(&["--coordinator=https://a:1", "exec", "list", "-o", "json"]);
    assert_eq!(value(&p, "coordinator"), ["https://a:1"]);
    assert_eq!(value(&p, "output"), ["json"], "-o is --output");
    // After the subcommand as before; written in both places, the later wins.
    let p = fx.ok(&["exec", "list", "--coordinator", "https://b:2"]);
    assert_eq!(value(&p, "coordinator"), ["https://b:2"]);
    let p = fx.ok(&[
        "--coordinator",
        "https://a:1",
        "exec",
        "list",
        "--coordinator",
        "https://b:2",
    ]);
    assert_eq!(value(&p, "coordinator"), ["https://b:2"]);
    // A value that is also a command's name is still a value.
    let p = fx.ok(&["--coordinator", "exec", "exec", "list"]);
    assert_eq!(value(&p, "coordinator"), ["exec"]);
    // The command's own options after it are left as written.
    let p = fx.ok(&[
        "--coordinator",
        "https://a:1",
        "exec",
        "list",
        "--output",
        "json",
    ]);
    assert_eq!(value(&p, "output"), ["json"]);
    // A command without the option refuses it, wherever it is written.
    let e = fx.err(&["--coordinator", "https://a:1", "validate", "f.toml"]);
    assert_eq!(e.code, "USAGE");
    assert!(e.message.contains("baton validate"), "{}", e.message);
}

#[test]
fn the_current_context_is_below_the_file_and_a_named_one_replaces_it() {
    let fx = Fixture::new();
    let store_path = fx.dir.path().join(contexts::FILE_NAME);
    let mut store = contexts::Store::default();
    for (name, url) in [("prod", "https://prod:7400"), ("dev", "https://dev:7400")] {
        store.contexts.insert(
            name.into(),
            contexts::Context {
                coordinator: url.into(),
                tls_dir: format!("/ids/{name}").into(),
                token_file: (name == "dev").then(|| "/ids/dev.token".into()),
            },
        );
    }
    store.current = Some("prod".into());
    store.save(&store_path).unwrap();

    let p = fx.ok(&["exec", "list"]);
    assert_eq!(value(&p, "coordinator"), ["https://prod:7400"]);
    assert_eq!(value(&p, "tls-dir"), ["/ids/prod"]);
    assert_eq!(value(&p, "context"), ["prod"]);
    assert_eq!(
        setting(&p, "coordinator").source,
        Source::Context("prod".into())
    );
    assert_eq!(setting(&p, "token-file").values, None);

    let p = fx.ok(&["exec", "list", "--context", "dev"]);
    assert_eq!(value(&p, "coordinator"), ["https://dev:7400"]);
    assert_eq!(value(&p, "token-file"), ["/ids/dev.token"]);
    let p = fx.ok(&["--coordinator", "https://flag:1", "exec", "list"]);
    assert_eq!(value(&p, "coordinator"), ["https://flag:1"]);
    assert_eq!(
        value(&p, "tls-dir"),
        ["/ids/prod"],
        "the rest from the context"
    );

    let cfg = fx.file("c.toml", "tls-dir = \"/from/file\"\n");
    let p = fx.ok(&["exec", "list", "--config", &cfg]);
    assert_eq!(value(&p, "tls-dir"), ["/from/file"], "file above context");
    assert_eq!(value(&p, "coordinator"), ["https://prod:7400"]);

    let e = fx.err(&["exec", "list", "--context", "staging"]);
    assert_eq!(e.code, "CONTEXT_NOT_FOUND");
    assert!(e.message.contains("dev, prod"), "{}", e.message);
    // No place for contexts (no HOME): none is current; naming one is an error.
    let argv = |args: &[&str]| {
        std::iter::once("baton")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect::<Vec<_>>()
    };
    let no_env = |_: &str| None;
    let p = parse(tree(), argv(&["exec", "list"]), &no_env).unwrap();
    assert_eq!(setting(&p, "coordinator").source, Source::Default);
    match parse(
        tree(),
        argv(&["exec", "list", "--context", "prod"]),
        &no_env,
    ) {
        Err(ParseError::Cli(e)) => assert_eq!(e.code, "CONTEXT_STORE_UNAVAILABLE"),
        other => panic!("{other:?}"),
    }
    // Daemons never take a context.
    let p = fx.ok(&["agent"]);
    assert!(
        p.settings
            .iter()
            .all(|s| s.source == Source::Default || matches!(s.source, Source::Env(_)))
    );
}

#[test]
fn print_config_shows_sources_and_never_a_secret() {
    let fx = Fixture::new();
    let cfg = fx.file("d.toml", "data-dir = \"/srv\"\nlabel = [\"a=b\"]\n");
    let p = fx.ok(&[
        "agent",
        "--config",
        &cfg,
        "--enroll",
        "s3cr3t-token",
        "-p",
        "password=hunter2",
        "--print-config",
    ]);
    assert!(p.print_config);
    let text = render(&p.path, &p.settings);
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(text.contains("enroll = \"<set>\""), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("param = [\"password=<set>\"]"), "{text}");
    assert!(text.contains(&format!("# file {cfg}")), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:7400\""), "{text}");
    assert!(text.contains("# default"), "{text}");
    assert!(text.contains("label = [\"a=b\"]"), "{text}");
    assert!(text.contains("insecure = false"), "{text}");
    assert!(text.contains("# slots is not set"), "{text}");
    // The output is a config file: values lines parse back as TOML.
    let toml_text: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{}\n", l.split("  #").next().unwrap()))
        .collect();
    let back: toml::Table = toml_text.parse().unwrap();
    assert_eq!(back["data-dir"].as_str(), Some("/srv"));
    let _ = Path::new(&cfg);
}

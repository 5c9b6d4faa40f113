//! Parsing and validating the configuration: defaults, precedence, one-line errors.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_parts(toml::from_str(text).unwrap(), &FlagConfig::default())
}

#[test]
fn builtin_internal_cidrs_parse() {
    for cidr in BUILTIN_INTERNAL_CIDRS {
        cidr.parse::<IpNet>().unwrap();
    }
}

#[test]
fn empty_config_uses_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    assert!(config.attach_cgroups.is_empty());
    assert!(config.protect.is_empty());
}

#[test]
fn cidr_typo_names_the_value_and_the_fix() {
    let error = parse(r#"internal_cidrs = ["192.168.1.0/33"]"#)
        .unwrap_err()
        .0;
    assert!(error.contains("\"192.168.1.0/33\""), "{error}");
    assert!(error.contains("internal_cidrs"), "{error}");
    assert!(error.contains("e.g."), "{error}");
}

#[test]
fn listen_address_typo_names_the_value_and_the_fix() {
    let error = parse(r#"listen = "127.0.0.1""#).unwrap_err().0;
    assert!(
        error.contains("\"127.0.0.1\"") && error.contains("ip:port"),
        "{error}"
    );
    assert_eq!(parse(r#"listen = "off""#).unwrap().listen, None);
    assert_eq!(
        parse("").unwrap().listen,
        Some(DEFAULT_LISTEN.parse().unwrap())
    );
}

#[test]
fn unknown_gateway_is_an_error() {
    let error = parse(
        r#"
        [[gateways]]
        name = "vpn"
        [[protect]]
        cgroup = "a"
        gateway = "vnp"
        "#,
    )
    .unwrap_err()
    .0;
    assert!(
        error.contains("\"vnp\"") && error.contains("known: vpn"),
        "{error}"
    );
}

#[test]
fn flags_extend_the_file() {
    let file: FileConfig = toml::from_str(r#"internal_cidrs = ["10.0.0.0/8"]"#).unwrap();
    let flags = FlagConfig {
        pin_dir: Some("/sys/fs/bpf/x".into()),
        internal_cidrs: vec!["fd00::1".into()],
        ..FlagConfig::default()
    };
    let config = Config::from_parts(file, &flags).unwrap();
    assert_eq!(config.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
    assert_eq!(
        config.internal_cidrs,
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::1/128".parse().unwrap()
        ]
    );
}

//! Least privilege in spin.toml: each component reaches only the database
//! and holds only the secrets it uses.

use tavle_host::manifest::Manifest;
use tavle_tests::project_root;

fn manifest() -> Manifest {
    Manifest::load(&project_root().join("spin.toml")).unwrap()
}

#[test]
fn components_reach_only_the_database() {
    for (name, c) in &manifest().components {
        assert_eq!(c.allowed_outbound_hosts, ["postgres://{{ db_host }}"], "component {name}");
    }
}

#[test]
fn the_signing_key_goes_to_login_alone_and_secrets_only_where_used() {
    let m = manifest();
    for (name, c) in &m.components {
        let has_signing_key = c.variables.values().any(|t| t.contains("token_signing_key"));
        assert_eq!(has_signing_key, name == "login", "component {name}");
        // Retention's own database login (it may prune the logs) and the
        // scheduler's token go to retention alone.
        for retention_only in ["retention_db_url", "scheduler_token"] {
            let has = c.variables.values().any(|t| t.contains(retention_only));
            assert_eq!(has, name == "retention", "component {name}: {retention_only}");
        }
        for (var, template) in &c.variables {
            let app_var = if name == "retention" && var == "db_url" { "retention_db_url" } else { var };
            assert_eq!(template, &format!("{{{{ {app_var} }}}}"), "{name}.{var} maps straight to the app variable");
        }
    }
    for secret in m.variables.iter().filter(|(_, v)| v.secret).map(|(k, _)| k) {
        assert!(
            m.components.values().any(|c| c.variables.values().any(|t| t == &format!("{{{{ {secret} }}}}"))),
            "secret variable {secret} is declared but no component uses it"
        );
    }
}

#[test]
fn every_component_builds_for_wasm32_wasip2_from_its_own_crate() {
    let text = std::fs::read_to_string(project_root().join("spin.toml")).unwrap();
    let raw: toml::Value = toml::from_str(&text).unwrap();
    for (name, c) in raw["component"].as_table().unwrap() {
        let crate_name = format!("tavle-{name}");
        let command = c["build"]["command"].as_str().unwrap();
        assert_eq!(command, format!("cargo build --target wasm32-wasip2 --release -p {crate_name}"));
        let source = c["source"].as_str().unwrap();
        assert_eq!(source, format!("target/wasm32-wasip2/release/{}.wasm", crate_name.replace('-', "_")));
    }
}

#[test]
fn routes_resolve_to_their_components() {
    let m = manifest();
    for (path, component) in [
        ("/auth/login", Some("login")),
        ("/admin/users/x/roles", Some("login")),
        ("/internal/retention/run", Some("retention")),
        ("/retention/runs", Some("retention")),
        ("/elsewhere", None),
    ] {
        assert_eq!(m.route_for(path).map(|r| r.component.as_str()), component, "{path}");
    }
}

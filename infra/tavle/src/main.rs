//! `tavle`: the operator binary.
//!
//!   tavle dev [--demo] [--port N] [--listen ADDR] [--workers N] [--manifest PATH]
//!   tavle migrate
//!   tavle create-tenant --slug SLUG --name NAME --admin-username USER [--admin-display-name NAME]
//!   tavle keygen
//!   tavle verify-access-log --tenant SLUG [--expect-head HASH] [--no-anchor]
//!   tavle prune-access-log --tenant SLUG --before YYYY-MM-DD
//!   tavle generate-dataset --tenant SLUG [--pupils N] [--groups N] [--results N] [--schools N] [--jobs N]
//!
//! Passwords are read from `TAVLE_ADMIN_PASSWORD` or standard input, never
//! from the command line (argv is visible to every user of the machine).

use anyhow::{anyhow, bail, Context, Result};
use sqlx::postgres::PgPoolOptions;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use tavle_host::host::HostConfig;
use tavle_host::manifest::{variables_from_env, Manifest};
use tavle_host::ops;
use tavle_host::pgcluster::PgCluster;

const USAGE: &str = "usage:
  tavle dev [--demo] [--port 3000] [--listen 127.0.0.1] [--workers N] [--manifest spin.toml]
      serve every route of spin.toml natively; without DATABASE_URL a private
      PostgreSQL is started under .tavle/pg; --demo loads a demo tenant with
      synthetic pupils and staff and prints the demo logins
  tavle migrate
      apply migrations to DATABASE_URL (or the URL in the file DATABASE_URL_FILE
      names; so for every command below, not for dev)
  tavle create-tenant --slug SLUG --name NAME --admin-username USER [--admin-display-name NAME]
      create a tenant and its first admin on DATABASE_URL; the password comes
      from TAVLE_ADMIN_PASSWORD or the first line of standard input
  tavle keygen
      print fresh keys for the secret Spin variables
  tavle verify-access-log --tenant SLUG [--expect-head HASH] [--no-anchor]
      recompute the tenant's hash-chained access log on DATABASE_URL and report
      the first broken link (exit status 1 if there is one); with --expect-head,
      a head printed by an earlier run must be in the log's checkpoint chain.
      A good check leaves an anchor of what it checked (unless --no-anchor)
      and prints its hash: keep it outside the database
  tavle prune-access-log --tenant SLUG --before YYYY-MM-DD
      delete the tenant's access records from before that date (midnight UTC,
      at least 6 months back) in one transaction, leaving a checkpoint that
      verification starts from; prints the new head
  tavle generate-dataset --tenant SLUG [--pupils 100000] [--groups 4000] [--results 10000000]
                         [--schools N] [--year-levels 10] [--jobs 2] [--admin-username admin]
      load a synthetic dataset (synthetic identity numbers only) into the tenant
      on DATABASE_URL, creating it if needed (admin password as for
      create-tenant); keys from SPIN_VARIABLE_IDENTITY_KEY and
      SPIN_VARIABLE_BLIND_INDEX_KEY, else .tavle/dev-secrets.env";

struct Args(Vec<String>);

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|a| a != name);
        before != self.0.len()
    }
    fn value(&mut self, name: &str) -> Result<Option<String>> {
        let Some(i) = self.0.iter().position(|a| a == name) else { return Ok(None) };
        if i + 1 >= self.0.len() {
            bail!("{name} needs a value");
        }
        let v = self.0.remove(i + 1);
        self.0.remove(i);
        Ok(Some(v))
    }
    fn finish(self) -> Result<()> {
        if let Some(extra) = self.0.first() {
            bail!("unexpected argument `{extra}`\n\n{USAGE}");
        }
        Ok(())
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        println!("{USAGE}");
        return Ok(());
    }
    let command = argv.remove(0);
    let mut args = Args(argv);
    match command.as_str() {
        "dev" => dev(args),
        "migrate" => {
            args.finish()?;
            block_on(async {
                let pool = connect(&database_url()?).await?;
                ops::migrate(&pool).await?;
                println!("migrations applied");
                Ok(())
            })
        }
        "create-tenant" => {
            let slug = args.value("--slug")?.ok_or_else(|| anyhow!("--slug is required"))?;
            let name = args.value("--name")?.ok_or_else(|| anyhow!("--name is required"))?;
            let admin = args.value("--admin-username")?.ok_or_else(|| anyhow!("--admin-username is required"))?;
            let display = args.value("--admin-display-name")?.unwrap_or_else(|| admin.clone());
            args.finish()?;
            let password = read_password()?;
            block_on(async {
                let pool = connect(&database_url()?).await?;
                let (tenant, user) = ops::create_tenant(
                    &pool,
                    ops::NewTenant {
                        slug: &slug,
                        name: &name,
                        admin_username: &admin,
                        admin_display_name: &display,
                        admin_password: &password,
                    },
                )
                .await?;
                println!("tenant {slug} created (id {tenant}); admin user id {user}");
                Ok(())
            })
        }
        "verify-access-log" => {
            let slug = args.value("--tenant")?.ok_or_else(|| anyhow!("--tenant is required"))?;
            let expect_head = args.value("--expect-head")?;
            let anchor = !args.flag("--no-anchor");
            args.finish()?;
            block_on(async {
                let pool = connect(&database_url()?).await?;
                let opts = ops::VerifyOptions { expect_head, anchor };
                let report = ops::verify_access_log_with(&pool, &slug, &opts).await?;
                match report.broken {
                    None => {
                        println!(
                            "access log of {slug}: {} records after the newest cut, {} checkpoints, chain intact",
                            report.records, report.checkpoints
                        );
                        if let Some(id) = report.expected_head {
                            println!("the expected head is checkpoint {id} of the chain");
                        }
                        if let Some((id, digest)) = report.anchor {
                            println!("head {digest} (anchor {id}): keep a copy outside the database");
                        }
                        Ok(())
                    }
                    Some(broken) => {
                        println!("access log of {slug}: BROKEN after {} good records: {broken}", report.records);
                        std::process::exit(1);
                    }
                }
            })
        }
        "prune-access-log" => {
            let slug = args.value("--tenant")?.ok_or_else(|| anyhow!("--tenant is required"))?;
            let before = args.value("--before")?.ok_or_else(|| anyhow!("--before is required"))?;
            args.finish()?;
            block_on(async {
                let pool = connect(&database_url()?).await?;
                let report = ops::prune_access_log(&pool, &slug, &before).await?;
                println!(
                    "access log of {slug}: {} records from before {before} deleted; head {} (checkpoint {}): keep a copy outside the database",
                    report.deleted, report.digest, report.checkpoint_id
                );
                Ok(())
            })
        }
        "generate-dataset" => {
            use tavle_host::dataset::{parse_count, run_cli, Spec};
            let tenant = args.value("--tenant")?.ok_or_else(|| anyhow!("--tenant is required"))?;
            let pupils = parse_count("--pupils", args.value("--pupils")?, 100_000)? as usize;
            let groups = parse_count("--groups", args.value("--groups")?, 4_000)? as usize;
            let results = parse_count("--results", args.value("--results")?, 10_000_000)?;
            let mut spec = Spec::new(&tenant, pupils, groups, results);
            spec.schools =
                args.value("--schools")?.map(|v| parse_count("--schools", Some(v), 0)).transpose()?.map(|n| n as usize);
            spec.year_levels = parse_count("--year-levels", args.value("--year-levels")?, 10)? as u32;
            spec.jobs = parse_count("--jobs", args.value("--jobs")?, 2)? as usize;
            spec.admin_username = args.value("--admin-username")?.unwrap_or_else(|| "admin".to_owned());
            args.finish()?;
            block_on(run_cli(&database_url()?, spec, read_password))
        }
        "keygen" => {
            args.finish()?;
            for (name, value) in fresh_secrets() {
                println!("SPIN_VARIABLE_{}={value}", name.to_uppercase());
            }
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn database_url() -> Result<String> {
    url_from(std::env::var("DATABASE_URL").ok(), std::env::var_os("DATABASE_URL_FILE").map(PathBuf::from))
}

/// `DATABASE_URL`, or the contents of the file `DATABASE_URL_FILE` names (a mounted
/// Kubernetes secret: the URL then is in no process environment). One trailing line
/// break is dropped; both set is refused, as it is ambiguous which one applies.
fn url_from(var: Option<String>, file: Option<PathBuf>) -> Result<String> {
    match (var, file) {
        (Some(_), Some(_)) => bail!("set DATABASE_URL or DATABASE_URL_FILE, not both"),
        (Some(url), None) => Ok(url),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading DATABASE_URL_FILE {}", path.display()))?;
            let url = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
            if url.is_empty() || url.contains(['\n', '\r']) {
                bail!("DATABASE_URL_FILE {} must hold exactly one URL", path.display());
            }
            Ok(url.to_owned())
        }
        (None, None) => Err(anyhow!("DATABASE_URL (or DATABASE_URL_FILE) is not set")),
    }
}

async fn connect(url: &str) -> Result<sqlx::PgPool> {
    let options = tavle_host::host::connect_options(url).context("DATABASE_URL")?;
    PgPoolOptions::new().max_connections(2).connect_with(options).await.context("connecting to the database")
}

fn read_password() -> Result<String> {
    if let Ok(p) = std::env::var("TAVLE_ADMIN_PASSWORD") {
        return Ok(p);
    }
    eprintln!("admin password (one line on standard input):");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.trim_end_matches(['\n', '\r']).to_owned();
    if line.is_empty() {
        bail!("no password given (set TAVLE_ADMIN_PASSWORD or pipe it on standard input)");
    }
    Ok(line)
}

/// Fresh values for every secret variable: token key pair, identity keys.
fn fresh_secrets() -> Vec<(&'static str, String)> {
    use base64::Engine;
    let (signing, public) = tavle_login::generate_signing_key();
    let key = || {
        let mut k = [0u8; 32];
        getrandom(&mut k);
        base64::engine::general_purpose::STANDARD.encode(k)
    };
    vec![
        ("token_signing_key", signing),
        ("token_public_keys", public),
        ("identity_key", key()),
        ("blind_index_key", key()),
        ("webhook_secret_key", key()),
        ("scheduler_token", key()),
    ]
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("/dev/urandom is readable");
}

/// Development secrets, generated once per checkout under `.tavle/` (0600).
fn dev_secrets(dir: &Path) -> Result<HashMap<String, String>> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("dev-secrets.env");
    std::fs::create_dir_all(dir)?;
    let mut secrets: HashMap<String, String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // Keep existing keys (data was encrypted with them); add any new ones.
    let before = secrets.len();
    for (k, v) in fresh_secrets() {
        secrets.entry(k.to_owned()).or_insert(v);
    }
    if secrets.len() != before || !path.exists() {
        let mut text: Vec<String> = secrets.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        text.sort();
        std::fs::write(&path, text.concat())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    secrets.insert("accept_synthetic_identity_numbers".into(), "true".into());
    Ok(secrets)
}

fn dev(mut args: Args) -> Result<()> {
    let demo = args.flag("--demo");
    let port: u16 = args.value("--port")?.map_or(Ok(3000), |p| p.parse()).context("--port")?;
    let listen = args.value("--listen")?.unwrap_or_else(|| "127.0.0.1".to_owned());
    let workers: usize = match args.value("--workers")? {
        Some(w) => w.parse().context("--workers")?,
        None => std::thread::available_parallelism().map_or(2, usize::from),
    };
    let manifest_path = PathBuf::from(args.value("--manifest")?.unwrap_or_else(|| "spin.toml".to_owned()));
    args.finish()?;
    let manifest = Manifest::load(&manifest_path)?;
    let project = manifest_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let state_dir = project.join(".tavle");

    // Variables: development secrets < environment (SPIN_VARIABLE_*) < database.
    let mut provided = dev_secrets(&state_dir)?;
    provided.extend(variables_from_env());
    let _cluster;
    let mut pg_dir = state_dir.join("pg");
    let db_url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            pg_dir = tavle_host::pgcluster::persistent_dir_for(&pg_dir)?;
            let cluster = PgCluster::start_persistent(&pg_dir)?;
            let url = cluster.url("tavle");
            println!("private PostgreSQL on 127.0.0.1:{} (data in {})", cluster.port(), pg_dir.display());
            _cluster = cluster;
            url
        }
    };
    let opts: sqlx::postgres::PgConnectOptions = db_url.parse().context("DATABASE_URL")?;
    provided.insert("db_host".into(), format!("{}:{}", opts.get_host(), opts.get_port()));
    let private = std::env::var("DATABASE_URL").is_err();

    block_on(async {
        if private {
            ops::ensure_database(&db_url).await?;
        }
        let pool = connect(&db_url).await?;
        // The components connect as the application role, which owns nothing,
        // as in production; migrations and demo data run as the owner. On the
        // private cluster the roles are made here, before the migrations
        // whose REVOKEs need them. With DATABASE_URL, SPIN_VARIABLE_DB_URL
        // names the application role's URL (else the owner's is used).
        if private {
            let migrated_before: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&pool).await?;
            let created = ops::ensure_app_roles(&pool).await?;
            if created && migrated_before {
                bail!(
                    "this private cluster was migrated before Tavle created its application role; \
                     remove {} to start afresh",
                    pg_dir.display()
                );
            }
            if created || !migrated_before {
                ops::grant_app_role(&pool).await?;
            }
            let app_url = format!(
                "postgres://{}@{}:{}/{}",
                ops::APP_LOGIN,
                opts.get_host(),
                opts.get_port(),
                opts.get_database().unwrap_or("tavle")
            );
            provided.insert("db_url".into(), app_url.clone());
            provided.insert("retention_db_url".into(), app_url.replacen(ops::APP_LOGIN, ops::RETENTION_LOGIN, 1));
        } else if !provided.contains_key("db_url") {
            eprintln!("warning: the components connect with DATABASE_URL (set SPIN_VARIABLE_DB_URL to the application role's URL)");
            provided.insert("db_url".into(), db_url.clone());
        }
        if !provided.contains_key("retention_db_url") {
            eprintln!("warning: retention connects with DATABASE_URL (set SPIN_VARIABLE_RETENTION_DB_URL to the retention role's URL)");
            provided.insert("retention_db_url".into(), db_url.clone());
        }
        ops::migrate(&pool).await?;
        if demo {
            let logins = ops::load_demo(
                &pool,
                provided.get("identity_key").map_or("", String::as_str),
                provided.get("blind_index_key").map_or("", String::as_str),
            )
            .await?;
            println!("demo tenant `{}` loaded (synthetic data only). Logins:", ops::DEMO_TENANT);
            for l in logins {
                println!("  {:<12} {:<16} password: {}", l.username, l.role, l.password);
            }
        }
        pool.close().await;
        Ok(())
    })?;

    let config = HostConfig::new(manifest, &provided)?;
    let listener =
        std::net::TcpListener::bind((listen.as_str(), port)).with_context(|| format!("binding {listen}:{port}"))?;
    println!("Tavle listening on http://{}", listener.local_addr()?);
    tavle_host::server::serve(listener, config, workers)
}

#[cfg(test)]
mod tests {
    use super::url_from;

    #[test]
    fn database_url_comes_from_the_variable_or_the_file() {
        let dir = std::env::temp_dir().join(format!("tavle-url-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = "postgres://tavle_owner:pw@db.example/tavle?sslmode=verify-full";

        assert_eq!(url_from(Some(url.into()), None).unwrap(), url);
        // A mounted secret ends with or without a line break; both give the URL.
        for (name, text) in [("plain", url.to_owned()), ("lf", format!("{url}\n")), ("crlf", format!("{url}\r\n"))] {
            let f = dir.join(name);
            std::fs::write(&f, text).unwrap();
            assert_eq!(url_from(None, Some(f)).unwrap(), url, "{name}");
        }
        // Refused: both set, neither set, a missing, empty or multi-line file.
        let f = dir.join("plain");
        assert!(url_from(Some(url.into()), Some(f)).unwrap_err().to_string().contains("not both"));
        assert!(url_from(None, None).unwrap_err().to_string().contains("not set"));
        assert!(url_from(None, Some(dir.join("missing"))).is_err());
        for (name, text) in [("empty", String::new()), ("two", format!("{url}\n{url}\n"))] {
            let f = dir.join(name);
            std::fs::write(&f, text).unwrap();
            assert!(url_from(None, Some(f)).unwrap_err().to_string().contains("exactly one URL"), "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

// Offline checks for infra/terraform (no cloud account, no provider download).
//
//   node check_hcl.mjs [--fix] [--no-self-test] [terraform-dir]
//
// 1. Parse: every *.tf / *.tfvars / *.hcl(.example) file is parsed by HashiCorp's own
//    hcl/v2 parser (compiled to WebAssembly, npm @cdktf/hcl2json). Syntax errors fail.
// 2. Format: every file must equal hclwrite.Format(file) (npm @cdktf/hcl-tools), the
//    formatter that `terraform fmt` is built on; plus LF line endings and a final
//    newline. `--fix` rewrites the files instead of failing.
// 3. Policy: only what checkov cannot express, because it is about the configuration
//    rather than the resources checkov renders from it: variable validations (the EEA
//    allowlist, retention bounds), the geo-backup pair map in locals, preconditions,
//    that the log workspace shares the server's region, TLS settings checked against
//    their variable's validation, pinned providers, sensitive inputs and secret-free
//    outputs. The rules checkov can check on the resources (EEA locations, geo-backup
//    region, backup and log retention, private server, no firewall rules, diagnostic
//    settings) are checkov policies: infra/check/checkov/policies, run by checkov.sh.
//
// NOT checked here (needs provider schemas, i.e. `terraform init` with network access):
// `terraform validate` (argument names/types against the azurerm schema), plans.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "@cdktf/hcl2json";
import { format } from "@cdktf/hcl-tools";

// Azure EU/EEA regions and their EEA paired regions, shared with the checkov policies.
// check_hcl.sh runs a copy of this file from target/, so it names the file.
const regionsFile = process.env.TAVLE_EEA_REGIONS ?? path.join(path.dirname(fileURLToPath(import.meta.url)), "eea_regions.json");
const REGIONS = JSON.parse(fs.readFileSync(regionsFile, "utf8"));
export const EEA_REGIONS = new Set(REGIONS.regions);
const EEA_GEO_BACKUP_PAIR = REGIONS.geo_backup_pair;

/** Runs all checks on `dir`; returns the list of problems (empty = pass). */
export async function checkDir(dir, { fix = false, log = console.log } = {}) {
  const errors = [];
  const fail = (msg) => errors.push(msg);

  function listFiles(d) {
    const out = [];
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.name === ".terraform" || e.name.startsWith(".")) continue;
      const p = path.join(d, e.name);
      if (e.isDirectory()) out.push(...listFiles(p));
      else if (/\.(tf|tfvars|hcl)(\.example)?$/.test(e.name)) out.push(p);
    }
    return out.sort();
  }

  const files = listFiles(dir);
  if (!files.some((f) => f.endsWith(".tf"))) fail(`no .tf files found under ${dir}`);

  // ---- 1 + 2: parse and format ------------------------------------------------------
  const parsed = {};
  for (const f of files) {
    const rel = path.relative(dir, f);
    const src = fs.readFileSync(f, "utf8");
    try {
      // hcl2json only accepts .tf/.hcl names; parse example files under a neutral name.
      parsed[rel] = await parse(rel.replace(/\.example$/, "").replace(/\.tfvars$/, ".tfvars.hcl"), src);
    } catch (e) {
      fail(`${rel}: HCL parse error: ${String(e.message ?? e).replace(/^Error: /, "")}`);
      continue;
    }
    let want = await format(src);
    want = want.replace(/\r\n/g, "\n");
    if (!want.endsWith("\n")) want += "\n";
    if (want !== src) {
      if (fix) {
        fs.writeFileSync(f, want);
        log(`formatted ${rel}`);
      } else {
        const a = src.split("\n");
        const b = want.split("\n");
        let i = 0;
        while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++;
        fail(
          `${rel}: not formatted (first difference at line ${i + 1}):\n` +
            `    have: ${JSON.stringify(a[i] ?? "<EOF>")}\n    want: ${JSON.stringify(b[i] ?? "<EOF>")}\n` +
            `  run: bash infra/check/check_hcl.sh --fix   (or terraform fmt)`,
        );
      }
    }
  }

  // ---- 3: policy ------------------------------------------------------------------
  // Merge the .tf files of the root module (tfvars/backend examples are not config).
  const cfg = { variable: {}, resource: {}, output: {}, locals: [], terraform: [], data: {} };
  for (const [rel, j] of Object.entries(parsed)) {
    if (!rel.endsWith(".tf") || rel.includes(path.sep)) continue;
    for (const [k, v] of Object.entries(j)) {
      if (k === "locals" || k === "terraform") cfg[k].push(...v);
      else if (k === "resource" || k === "data") {
        for (const [type, byName] of Object.entries(v)) {
          cfg[k][type] ??= {};
          for (const [name, blocks] of Object.entries(byName)) cfg[k][type][name] = blocks[0];
        }
      } else if (k === "variable" || k === "output") {
        for (const [name, blocks] of Object.entries(v)) cfg[k][name] = blocks[0];
      }
    }
  }
  const first = (x) => (Array.isArray(x) ? x[0] : x);
  const quoted = (expr) => [...String(expr).matchAll(/"([^"\\]*)"/g)].map((m) => m[1]);
  const resources = (type) => Object.entries(cfg.resource[type] ?? {});

  function policy() {
    // Provider and Terraform versions are pinned with an upper bound.
    const tf = cfg.terraform[0] ?? {};
    if (!tf.required_version) fail("terraform.required_version is not set");
    const providers = first(tf.required_providers) ?? {};
    if (!providers.azurerm) fail("terraform.required_providers has no azurerm entry");
    for (const [name, p] of Object.entries(providers)) {
      if (!p.version || !/(<|~>|^=?\s*\d+\.\d+\.\d+$)/.test(p.version))
        fail(`provider ${name}: version "${p.version ?? ""}" is not pinned (needs an upper bound, ~> or an exact version)`);
    }

    // location: EU/EEA allowlist, Norway East by default.
    const loc = cfg.variable.location;
    if (!loc) return fail('variable "location" is missing');
    if (loc.default !== "norwayeast") fail(`variable "location": default must be "norwayeast", is ${JSON.stringify(loc.default)}`);
    const locVals = (loc.validation ?? []).filter((v) => /contains\s*\(/.test(v.condition) && /var\.location/.test(v.condition));
    if (locVals.length === 0) fail('variable "location": needs a validation `contains([...], var.location)` allowlist');
    for (const v of locVals) {
      const listed = quoted(v.condition);
      if (listed.length === 0) fail('variable "location": allowlist is empty');
      for (const r of listed) if (!EEA_REGIONS.has(r)) fail(`variable "location": "${r}" is not an Azure EU/EEA region`);
      if (!listed.includes("norwayeast")) fail('variable "location": allowlist must include "norwayeast"');
    }

    // Geo-backup pairs: each entry is the region's real Azure pair, inside the EEA
    // (the precondition in postgres.tf admits only regions listed here).
    const pairsExpr = cfg.locals.map((l) => l.eea_geo_backup_pair).find(Boolean);
    if (!pairsExpr || typeof pairsExpr !== "object") fail("locals.eea_geo_backup_pair (region -> paired region) is missing");
    else
      for (const [a, b] of Object.entries(pairsExpr)) {
        if (!EEA_REGIONS.has(a) || !EEA_REGIONS.has(b)) fail(`locals.eea_geo_backup_pair: ${a} -> ${b} leaves the EU/EEA`);
        else if (EEA_GEO_BACKUP_PAIR[a] !== b) fail(`locals.eea_geo_backup_pair: ${a} -> ${b} is not the Azure paired region of ${a} inside the EEA`);
      }

    // Retention bounds are validations of the inputs (checkov sees only the defaults).
    const brd = cfg.variable.backup_retention_days;
    if (!brd) fail('variable "backup_retention_days" is missing');
    else if (!(brd.validation ?? []).some((v) => /backup_retention_days\s*>=\s*30\b/.test(v.condition) && /backup_retention_days\s*<=\s*35\b/.test(v.condition)))
      fail('variable "backup_retention_days": needs a validation `var.backup_retention_days >= 30 && var.backup_retention_days <= 35`');
    const lrd = cfg.variable.log_retention_days;
    if (!lrd) fail('variable "log_retention_days" is missing');
    else if (!(lrd.validation ?? []).some((v) => /log_retention_days\s*>=\s*(18[3-9]|19\d|[2-9]\d\d)\b/.test(v.condition)))
      fail('variable "log_retention_days": needs a validation `var.log_retention_days >= 183`');

    // The server: one, with the EEA-pair precondition and configurable HA.
    const servers = resources("azurerm_postgresql_flexible_server");
    if (servers.length !== 1) fail(`expected exactly one azurerm_postgresql_flexible_server, found ${servers.length}`);
    for (const [name, s] of servers) {
      const id = `azurerm_postgresql_flexible_server.${name}`;
      const pre = (first(s.lifecycle)?.precondition ?? []).map((p) => p.condition).join(" ");
      if (!/contains\s*\(\s*keys\s*\(\s*local\.eea_geo_backup_pair\s*\)\s*,\s*var\.location\s*\)/.test(pre))
        fail(`${id}: needs a precondition that the paired (geo-backup) region is in the EEA (contains(keys(local.eea_geo_backup_pair), var.location))`);
      if (!s.dynamic?.high_availability && !s.high_availability)
        fail(`${id}: high availability must be configurable (dynamic "high_availability" block)`);
    }

    // TLS required, >= 1.2.
    const conf = Object.fromEntries(resources("azurerm_postgresql_flexible_server_configuration").map(([, c]) => [c.name, c.value]));
    if (conf.require_secure_transport !== "on") fail('server configuration "require_secure_transport" must be "on"');
    const tls = conf.ssl_min_protocol_version;
    const tlsOk =
      tls === "TLSv1.2" ||
      tls === "TLSv1.3" ||
      (tls === "${var.tls_min_version}" &&
        ["TLSv1.2", "TLSv1.3"].includes(cfg.variable.tls_min_version?.default) &&
        (cfg.variable.tls_min_version?.validation ?? []).some((v) => quoted(v.condition).every((q) => ["TLSv1.2", "TLSv1.3"].includes(q))));
    if (!tlsOk) fail('server configuration "ssl_min_protocol_version" must be TLSv1.2 or TLSv1.3');

    // Logs in the server's region: checkov sees both as the same rendered region only
    // by accident of the defaults, so require the workspace to follow var.location.
    const diags = resources("azurerm_monitor_diagnostic_setting").map(([, d]) => d);
    const pgDiag = diags.find((d) => /azurerm_postgresql_flexible_server\./.test(d.target_resource_id ?? ""));
    if (pgDiag && !(pgDiag.enabled_log ?? []).some((l) => l.category === "PostgreSQLLogs"))
      fail('PostgreSQL diagnostic setting must enable the "PostgreSQLLogs" category');
    for (const [name, w] of resources("azurerm_log_analytics_workspace"))
      if (!/var\.location|azurerm_resource_group\.[a-z_]+\.location/.test(w.location ?? ""))
        fail(`azurerm_log_analytics_workspace.${name}: must be in the module's region (var.location)`);

    // Secrets: sensitive inputs, never outputs.
    for (const [name, v] of Object.entries(cfg.variable))
      if (/password|secret|token|private_key/.test(name) && v.sensitive !== true)
        fail(`variable "${name}" looks secret and must be marked sensitive = true`);
    for (const [name, o] of Object.entries(cfg.output)) {
      if (o.sensitive === true) fail(`output "${name}": outputs must never carry secrets (sensitive = true found)`);
      if (/password|secret|token|connection_string|private_key/i.test(name + " " + JSON.stringify(o.value ?? "")))
        fail(`output "${name}": references a secret (password, key vault secret value, connection string)`);
    }
  }
  if (Object.keys(parsed).length === files.length) policy();
  return { errors, files: files.length };
}

// ---- self-test: prove that each class of problem is detected ----------------------
async function selfTest(dir) {
  const cases = [
    ["parse error", "postgres.tf", (s) => s + '\nresource "x" "y" {\n  a = \n}\n', "HCL parse error"],
    ["format", "postgres.tf", (s) => s.replace(/( +)= true\n/, " = true\n"), "not formatted"],
    ["non-EEA region allowed", "variables.tf", (s) => s.replace('"spaincentral", ', '"uksouth",      '), '"uksouth" is not an Azure EU/EEA region'],
    ["other default region", "variables.tf", (s) => s.replace('default     = "norwayeast"', 'default     = "swedencentral"'), 'default must be "norwayeast"'],
    ["geo pair outside the EEA", "main.tf", (s) => s.replace('norwayeast         = "norwaywest"', 'norwayeast         = "uksouth"   '), "norwayeast -> uksouth leaves the EU/EEA"],
    ["geo pair not the Azure pair", "main.tf", (s) => s.replace('norwayeast         = "norwaywest"', 'norwayeast         = "swedencentral"'), "is not the Azure paired region of norwayeast"],
    ["retention < 30 allowed", "variables.tf", (s) => s.replace("backup_retention_days >= 30", "backup_retention_days >= 7 "), "needs a validation `var.backup_retention_days >= 30"],
    ["log retention < 183 allowed", "variables.tf", (s) => s.replace("log_retention_days >= 183", "log_retention_days >= 30 "), "needs a validation `var.log_retention_days >= 183`"],
    ["no geo-pair precondition", "postgres.tf", (s) => s.replace("contains(keys(local.eea_geo_backup_pair), var.location)", "true"), "needs a precondition that the paired"],
    ["TLS 1.0", "variables.tf", (s) => s.replace('contains(["TLSv1.2", "TLSv1.3"], var.tls_min_version)', 'contains(["TLSv1", "TLSv1.2", "TLSv1.3"], var.tls_min_version)'), '"ssl_min_protocol_version" must be TLSv1.2 or TLSv1.3'],
    ["logs in another region", "monitoring.tf", (s) => s.replace('name                = "log-${local.name}"\n  location            = azurerm_resource_group.data.location', 'name                = "log-${local.name}"\n  location            = "westeurope"'), "must be in the module's region"],
    ["unpinned provider", "versions.tf", (s) => s.replace('version = ">= 0.11.0, < 1.0.0"', 'version = ">= 0.11.0"         '), "provider time"],
    ["secret output", "outputs.tf", (s) => s + '\noutput "admin_password" {\n  value = random_password.postgres_admin.result\n}\n', 'output "admin_password"'],
  ];
  let failed = 0;
  for (const [name, file, mutate, expect] of cases) {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tavle-hcl-selftest-"));
    try {
      for (const f of fs.readdirSync(dir)) {
        const p = path.join(dir, f);
        if (fs.statSync(p).isFile()) fs.copyFileSync(p, path.join(tmp, f));
      }
      const target = path.join(tmp, file);
      const before = fs.readFileSync(target, "utf8");
      const after = mutate(before);
      if (after === before) throw new Error(`mutation did not apply to ${file}`);
      fs.writeFileSync(target, after);
      const { errors } = await checkDir(tmp, { log: () => {} });
      if (!errors.some((e) => e.includes(expect))) {
        failed++;
        console.error(`infra/check self-test "${name}": expected a problem containing ${JSON.stringify(expect)}, got ${JSON.stringify(errors)}`);
      }
    } catch (e) {
      failed++;
      console.error(`infra/check self-test "${name}": ${e.message ?? e}`);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
  return { failed, total: cases.length };
}

const isMain = process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const args = process.argv.slice(2);
  const fix = args.includes("--fix");
  const here = path.dirname(fileURLToPath(import.meta.url));
  const dir = path.resolve(args.find((a) => !a.startsWith("--")) ?? path.join(here, "..", "terraform"));
  const { errors, files } = await checkDir(dir, { fix });
  if (errors.length) {
    console.error(`infra/check: HCL check FAILED (${errors.length} problem(s)) in ${dir}`);
    for (const e of errors) console.error(`  - ${e}`);
    process.exit(1);
  }
  console.log(`infra/check: ${files} HCL file(s) parse, are formatted and pass the policy checks (${dir})`);
  if (!fix && !args.includes("--no-self-test")) {
    const { failed, total } = await selfTest(dir);
    if (failed) {
      console.error(`infra/check: self-test FAILED (${failed} of ${total} injected problems not detected)`);
      process.exit(1);
    }
    console.log(`infra/check: self-test: all ${total} injected problems detected`);
  }
}

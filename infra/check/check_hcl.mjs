// Offline checks for infra/terraform (no cloud account, no provider download).
//
//   node check_hcl.mjs [--fix] [--no-self-test] [terraform-dir]
//
// 1. Parse: every *.tf / *.tfvars / *.hcl(.example) file is parsed by HashiCorp's own
//    hcl/v2 parser (compiled to WebAssembly, npm @cdktf/hcl2json). Syntax errors fail.
// 2. Format: every file must equal hclwrite.Format(file) (npm @cdktf/hcl-tools), the
//    formatter that `terraform fmt` is built on; plus LF line endings and a final
//    newline. `--fix` rewrites the files instead of failing.
// 3. Policy: assertions that keep the GDPR properties of the module from being
//    configured away (EU/EEA-only regions, private server, TLS, geo-backups in the EEA,
//    >= 30 days PITR, logs in-region, pinned providers, no secret outputs).
//
// NOT checked here (needs provider schemas, i.e. `terraform init` with network access):
// `terraform validate` (argument names/types against the azurerm schema), plans.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "@cdktf/hcl2json";
import { format } from "@cdktf/hcl-tools";

// Azure regions physically inside the EU/EEA (same list as variables.tf).
export const EEA_REGIONS = new Set([
  "norwayeast", "norwaywest", "swedencentral", "swedensouth", "westeurope",
  "northeurope", "germanywestcentral", "germanynorth", "francecentral",
  "francesouth", "polandcentral", "italynorth", "spaincentral",
]);

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

    // Geo-backup pairs stay inside the EEA.
    const pairsExpr = cfg.locals.map((l) => l.eea_geo_backup_pair).find(Boolean);
    if (!pairsExpr || typeof pairsExpr !== "object") fail("locals.eea_geo_backup_pair (region -> paired region) is missing");
    else
      for (const [a, b] of Object.entries(pairsExpr)) {
        if (!EEA_REGIONS.has(a) || !EEA_REGIONS.has(b)) fail(`locals.eea_geo_backup_pair: ${a} -> ${b} leaves the EU/EEA`);
        if (pairsExpr[b] !== a) fail(`locals.eea_geo_backup_pair: ${a} -> ${b} is not symmetric`);
      }

    // Literal locations anywhere must be EEA regions.
    for (const [type, byName] of Object.entries(cfg.resource))
      for (const [name, body] of Object.entries(byName))
        if (typeof body.location === "string" && !body.location.includes("${") && !EEA_REGIONS.has(body.location))
          fail(`${type}.${name}: literal location "${body.location}" is not an EU/EEA region`);

    // Backup retention >= 30 days.
    const brd = cfg.variable.backup_retention_days;
    if (!brd) fail('variable "backup_retention_days" is missing');
    else {
      if (!(brd.default >= 30 && brd.default <= 35)) fail(`variable "backup_retention_days": default ${brd.default} is outside 30..35`);
      if (!(brd.validation ?? []).some((v) => /backup_retention_days\s*>=\s*30\b/.test(v.condition)))
        fail('variable "backup_retention_days": needs a validation `var.backup_retention_days >= 30`');
    }

    // The server itself.
    const servers = resources("azurerm_postgresql_flexible_server");
    if (servers.length !== 1) fail(`expected exactly one azurerm_postgresql_flexible_server, found ${servers.length}`);
    for (const [name, s] of servers) {
      const id = `azurerm_postgresql_flexible_server.${name}`;
      if (s.public_network_access_enabled !== false) fail(`${id}: public_network_access_enabled must be false`);
      if (s.geo_redundant_backup_enabled !== true) fail(`${id}: geo_redundant_backup_enabled must be true`);
      if (!s.delegated_subnet_id) fail(`${id}: delegated_subnet_id (VNet integration) is required`);
      if (!s.private_dns_zone_id) fail(`${id}: private_dns_zone_id is required`);
      const r = s.backup_retention_days;
      if (!(r === "${var.backup_retention_days}" || (typeof r === "number" && r >= 30)))
        fail(`${id}: backup_retention_days must be var.backup_retention_days or >= 30`);
      const pre = (first(s.lifecycle)?.precondition ?? []).map((p) => p.condition).join(" ");
      if (!/eea_geo_backup_pair/.test(pre)) fail(`${id}: needs a precondition that the paired (geo-backup) region is in the EEA`);
      if (!s.dynamic?.high_availability && !s.high_availability)
        fail(`${id}: high availability must be configurable (dynamic "high_availability" block)`);
    }
    if (resources("azurerm_postgresql_flexible_server_firewall_rule").length > 0)
      fail("azurerm_postgresql_flexible_server_firewall_rule is not allowed: the server has no public endpoint");

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

    // Diagnostic logs of the server go to a Log Analytics workspace.
    const diags = resources("azurerm_monitor_diagnostic_setting").map(([, d]) => d);
    const pgDiag = diags.find((d) => /azurerm_postgresql_flexible_server\./.test(d.target_resource_id ?? ""));
    if (!pgDiag) fail("no azurerm_monitor_diagnostic_setting for the PostgreSQL server");
    else {
      if (!/azurerm_log_analytics_workspace\./.test(pgDiag.log_analytics_workspace_id ?? ""))
        fail("PostgreSQL diagnostic setting must send to a Log Analytics workspace of this module");
      if (!(pgDiag.enabled_log ?? []).some((l) => l.category === "PostgreSQLLogs"))
        fail('PostgreSQL diagnostic setting must enable the "PostgreSQLLogs" category');
    }
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
    ["non-EEA region", "variables.tf", (s) => s.replace('"spaincentral", ', '"uksouth",      '), '"uksouth" is not an Azure EU/EEA region'],
    ["public network", "postgres.tf", (s) => s.replace("public_network_access_enabled = false", "public_network_access_enabled = true "), "public_network_access_enabled must be false"],
    ["retention < 30", "variables.tf", (s) => s.replace("backup_retention_days >= 30", "backup_retention_days >= 7 "), "needs a validation `var.backup_retention_days >= 30`"],
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

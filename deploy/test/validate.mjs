// Validates Kubernetes objects (multi-document YAML on stdin, as
// `kubectl kustomize` prints them) against the API schemas of
// kubernetes-models, offline, and prints them back as one JSON array for
// the Rust test that cross-checks them with the code (tests/deploy.rs).
// An object of a kind it has no schema for is an error, not a pass.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";

const docs = yaml.loadAll(readFileSync(0, "utf8")).filter((d) => d != null);

async function modelOf(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : [null, apiVersion];
  const path =
    group === "monitoring.coreos.com"
      ? `@kubernetes-models/prometheus-operator/${group}/${version}`
      : group
        ? `kubernetes-models/${group}/${version}`
        : `kubernetes-models/${version}`;
  try {
    const module = await import(path);
    return module[kind];
  } catch {
    return undefined;
  }
}

let failed = 0;
for (const doc of docs) {
  const what = `${doc.kind}/${doc.metadata?.name}`;
  const Model = await modelOf(doc.apiVersion ?? "", doc.kind ?? "");
  if (!Model) {
    console.error(`${what}: no schema for ${doc.apiVersion} ${doc.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    console.error(`${what}: ${e.message}`);
    failed++;
  }
}
if (docs.length === 0) {
  console.error("no objects on stdin");
  failed++;
}
if (failed > 0) {
  process.exit(1);
}
process.stdout.write(JSON.stringify(docs));

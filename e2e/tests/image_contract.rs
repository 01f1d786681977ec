//! The Dockerfile is the production build of the two images; `e2e/k8s/images.sh`
//! builds the same images offline for the e2e cluster from
//! `e2e/k8s/images/<image>.contract`. This test fails when the two disagree on the
//! runtime contract (base, binaries and where they go, user, entrypoint, environment,
//! ports, volume), and, where the offline images were built, when an image's config
//! is not what its contract says.
//!
//! With `DYNAMO_K8S_SUITE=1` (`.ci/run` after `cluster.sh up`, which has just built
//! them) the built images are checked too; elsewhere the Dockerfile side only, so a
//! stale image cache cannot fail an unrelated run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// One image's runtime contract, from either side.
#[derive(Debug, Default, PartialEq, Eq)]
struct Contract {
    base: String,
    /// Destination path -> binary name.
    copies: BTreeMap<String, String>,
    user: String,
    entrypoint: Vec<String>,
    env: BTreeMap<String, String>,
    expose: Vec<String>,
    volumes: Vec<String>,
}

/// The Dockerfile's instructions, continuation lines joined, by stage name.
fn dockerfile_stages(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            joined.push(std::mem::take(&mut current));
        }
    }
    let mut stages = BTreeMap::new();
    let mut stage = String::new();
    for line in joined.into_iter().filter(|l| !l.is_empty()) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            stage = rest.rsplit(' ').next().unwrap_or_default().to_owned();
        }
        stages
            .entry(stage.clone())
            .or_insert_with(Vec::new)
            .push((instruction, rest.trim().to_owned()));
    }
    stages
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON list: {text}: {e}"))
}

fn from_dockerfile(stage: &[(String, String)]) -> Contract {
    let mut contract = Contract::default();
    for (instruction, rest) in stage {
        match instruction.as_str() {
            "FROM" => {
                contract.base = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            "COPY" => {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (dest, sources) = words.split_last().expect("COPY has a destination");
                for source in sources {
                    let name = source.rsplit('/').next().unwrap_or_default();
                    let path = if dest.ends_with('/') {
                        format!("{dest}{name}")
                    } else {
                        (*dest).to_owned()
                    };
                    contract.copies.insert(path, name.to_owned());
                }
            }
            "EXPOSE" => contract
                .expose
                .extend(rest.split_whitespace().map(str::to_owned)),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV key=value");
                    contract.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "VOLUME" => contract.volumes.extend(json_list(rest)),
            "USER" => contract.user = rest.clone(),
            "ENTRYPOINT" => contract.entrypoint = json_list(rest),
            _ => {}
        }
    }
    contract
}

/// A contract file, and the image name it is imported under.
fn from_contract_file(path: &Path) -> (String, Contract) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut contract = Contract::default();
    let mut name = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "name" => name = value.to_owned(),
            "base" => contract.base = value.to_owned(),
            "copy" => {
                let (source, dest) = value.split_once(' ').expect("copy SOURCE DEST");
                contract.copies.insert(dest.to_owned(), source.to_owned());
            }
            "expose" => contract.expose.push(value.to_owned()),
            "env" => {
                let (k, v) = value.split_once('=').expect("env KEY=VALUE");
                contract.env.insert(k.to_owned(), v.to_owned());
            }
            "volume" => contract.volumes.push(value.to_owned()),
            "user" => contract.user = value.to_owned(),
            "entrypoint" => contract.entrypoint = vec![value.to_owned()],
            other => panic!("{}: unknown key {other}", path.display()),
        }
    }
    (name, contract)
}

/// The config of the OCI layout `images.sh` kept beside the archive it imports.
fn built_config(layout: &Path) -> Value {
    let read = |path: PathBuf| -> Value {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let blob = |digest: &Value| {
        let digest = digest.as_str().expect("a digest");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        layout.join("blobs/sha256").join(hex)
    };
    let index = read(layout.join("index.json"));
    let manifest = read(blob(&index["manifests"][0]["digest"]));
    read(blob(&manifest["config"]["digest"]))
}

/// What the built image's config says, as a contract (base and copies are not in it).
fn from_built(config: &Value, want: &Contract) -> Contract {
    let config = &config["config"];
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let keys = |value: &Value| -> Vec<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let env = strings(&config["Env"])
        .into_iter()
        .filter_map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        // The base's PATH and SSL_CERT_FILE are distroless's, not the Dockerfile's.
        .filter(|(k, _)| k != "PATH" && k != "SSL_CERT_FILE")
        .collect();
    let mut expose: Vec<String> = keys(&config["ExposedPorts"])
        .into_iter()
        .map(|p| p.trim_end_matches("/tcp").to_owned())
        .collect();
    expose.sort();
    Contract {
        base: want.base.clone(),
        copies: want.copies.clone(),
        user: config["User"].as_str().unwrap_or_default().to_owned(),
        entrypoint: strings(&config["Entrypoint"]),
        env,
        expose,
        volumes: keys(&config["Volumes"]),
    }
}

#[test]
fn dockerfile_and_offline_images_agree() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("the Dockerfile");
    let stages = dockerfile_stages(&dockerfile);
    let cache = std::env::var_os("DYNAMO_K8S_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/dynamo-k8s"), PathBuf::from);
    let must_be_built = std::env::var("DYNAMO_K8S_SUITE").as_deref() == Ok("1");
    for (stage, image) in [("node", "dynamo-node"), ("operator", "dynamo-operator")] {
        let from_docker = from_dockerfile(
            stages
                .get(stage)
                .unwrap_or_else(|| panic!("the Dockerfile has no `{stage}` stage")),
        );
        let (name, mut contract) =
            from_contract_file(&repo().join(format!("e2e/k8s/images/{image}.contract")));
        assert!(
            name.ends_with(&format!("/{image}")),
            "{image}.contract names {name}"
        );
        let mut docker_sorted = from_docker;
        docker_sorted.expose.sort();
        contract.expose.sort();
        assert_eq!(
            docker_sorted, contract,
            "the Dockerfile's `{stage}` stage and e2e/k8s/images/{image}.contract differ"
        );
        let layout = cache.join("images").join(format!("{image}.oci"));
        if must_be_built {
            assert!(
                layout.join("index.json").exists(),
                "DYNAMO_K8S_SUITE=1 but {} was not built",
                layout.display()
            );
            let built = from_built(&built_config(&layout), &contract);
            assert_eq!(
                built,
                contract,
                "the built image {} differs from its contract",
                layout.display()
            );
            eprintln!("{image}: the built image's config matches the Dockerfile");
        } else {
            eprintln!("{image}: Dockerfile and contract agree (built images: DYNAMO_K8S_SUITE=1)");
        }
    }
}

#[test]
fn the_parser_reads_continued_env_lines_and_copy_destinations() {
    let stages = dockerfile_stages(
        "FROM base AS app\nCOPY --from=b /out/a /out/b /usr/bin/\nENV A=1 \\\n    B=2\nUSER 1:1\nENTRYPOINT [\"/usr/bin/a\"]\nVOLUME [\"/data\"]\nEXPOSE 80 81\n",
    );
    let contract = from_dockerfile(&stages["app"]);
    assert_eq!(contract.base, "base");
    assert_eq!(contract.copies["/usr/bin/a"], "a");
    assert_eq!(contract.copies["/usr/bin/b"], "b");
    assert_eq!(contract.env["B"], "2");
    assert_eq!(contract.user, "1:1");
    assert_eq!(contract.entrypoint, ["/usr/bin/a"]);
    assert_eq!(contract.volumes, ["/data"]);
    assert_eq!(contract.expose, ["80", "81"]);
}

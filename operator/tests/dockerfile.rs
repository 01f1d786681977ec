//! The `Dockerfile` (no Docker engine runs here, so its promises are checked on its
//! text; hadolint lints it in `.ci/static-checks`): one multi-stage build with targets
//! `node` and `operator`, small non-root runtime images whose user is the one the
//! builders' pods run as, a dependency layer built before any source is copied, and the
//! ports and data directory the builders' StatefulSet uses.

use std::collections::BTreeMap;

use dynamo_operator::builders::{CLIENT_PORT, DATA_DIR, HTTP_PORT, INTERNODE_PORT, NODE_UID};

/// One `FROM ... AS name` stage: its base and its instructions (continuations joined).
#[derive(Debug)]
struct Stage {
    base: String,
    instructions: Vec<String>,
}

impl Stage {
    fn lines(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter_map(|i| i.strip_prefix(keyword)?.strip_prefix(' '))
            .collect()
    }
}

fn stages() -> (Vec<String>, BTreeMap<String, Stage>) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile"))
        .expect("the Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() && current.is_empty() {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            current.push_str(continued.trim_end());
            current.push(' ');
        } else {
            current.push_str(line);
            instructions.push(std::mem::take(&mut current));
        }
    }
    let mut order = Vec::new();
    let mut stages = BTreeMap::new();
    let mut name = None;
    for instruction in instructions {
        if let Some(from) = instruction.strip_prefix("FROM ") {
            let (base, stage) = from.split_once(" AS ").expect("every stage is named");
            name = Some(stage.trim().to_owned());
            order.push(stage.trim().to_owned());
            stages.insert(
                stage.trim().to_owned(),
                Stage {
                    base: base.trim().to_owned(),
                    instructions: Vec::new(),
                },
            );
        } else if let Some(name) = &name {
            stages.get_mut(name).unwrap().instructions.push(instruction);
        }
    }
    (order, stages)
}

#[test]
fn node_and_operator_are_small_non_root_targets() {
    let (order, stages) = stages();
    for (target, binary) in [
        ("node", "/usr/local/bin/dynamo-node"),
        ("operator", "/usr/local/bin/dynamo-operator"),
    ] {
        let stage = stages
            .get(target)
            .unwrap_or_else(|| panic!("no target {target} in {order:?}"));
        // Distroless: no shell, no package manager.
        assert!(
            stage.base.starts_with("gcr.io/distroless/"),
            "{target}: {}",
            stage.base
        );
        assert!(stage.lines("RUN").is_empty(), "{target} runs nothing");
        // A numeric non-root user, the one the builders' pods run as, so the kubelet
        // can check runAsNonRoot.
        assert_eq!(
            stage.lines("USER"),
            [format!("{NODE_UID}:{NODE_UID}")],
            "{target}"
        );
        assert_eq!(
            stage.lines("ENTRYPOINT"),
            [format!("[\"{binary}\"]")],
            "{target}"
        );
        // Only the built binaries are copied in, from the build stage.
        for copy in stage.lines("COPY") {
            assert!(copy.starts_with("--from=build-"), "{target}: COPY {copy}");
        }
    }
    // `docker build .` without a target builds the node image.
    assert_eq!(order.last().map(String::as_str), Some("node"));
}

#[test]
fn dependencies_build_in_a_layer_before_the_sources() {
    let (_, stages) = stages();
    let deps = &stages["deps"];
    assert!(
        deps.lines("RUN")
            .iter()
            .any(|r| r.starts_with("cargo chef cook") && r.contains("--locked")),
        "{deps:?}"
    );
    // The deps stage sees only the recipe (manifests and lock file), never the sources.
    assert_eq!(
        deps.lines("COPY"),
        ["--from=planner /src/recipe.json recipe.json"]
    );
    for build in ["build-node", "build-operator"] {
        let stage = &stages[build];
        assert_eq!(
            stage.base, "deps",
            "{build} starts from the cooked dependencies"
        );
        assert!(
            stage
                .lines("RUN")
                .iter()
                .all(|r| r.starts_with("cargo build --release --locked")),
            "{build}"
        );
    }
}

#[test]
fn the_node_image_serves_the_ports_and_directory_the_statefulset_uses() {
    let (_, stages) = stages();
    let node = &stages["node"];
    assert_eq!(
        node.lines("EXPOSE"),
        [format!("{CLIENT_PORT} {INTERNODE_PORT} {HTTP_PORT}")]
    );
    let env = node.lines("ENV").join(" ");
    for expected in [
        format!("DYNAMO_LISTEN=0.0.0.0:{CLIENT_PORT}"),
        format!("DYNAMO_INTERNODE_LISTEN=0.0.0.0:{INTERNODE_PORT}"),
        format!("DYNAMO_HTTP_LISTEN=0.0.0.0:{HTTP_PORT}"),
        format!("DYNAMO_DATA_DIR={DATA_DIR}"),
    ] {
        assert!(
            env.split_whitespace().any(|e| e == expected),
            "{expected} in {env}"
        );
    }
    assert_eq!(node.lines("VOLUME"), [format!("[\"{DATA_DIR}\"]")]);
}

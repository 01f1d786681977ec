//! The `render` binary: every builder's object for each DynamoCluster of a file, as one
//! YAML stream, and clear errors for bad input.

use std::process::{Command, Output};

fn render(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_render"))
        .args(args)
        .output()
        .expect("render runs")
}

fn objects(output: &Output) -> Vec<serde_yaml::Value> {
    let text = String::from_utf8(output.stdout.clone()).expect("utf-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("yaml document"))
        .collect()
}

fn kinds_and_names(objects: &[serde_yaml::Value]) -> Vec<(String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn built_in_example_renders_every_object() {
    let output = render(&[]);
    assert!(output.status.success(), "{output:?}");
    let rendered = objects(&output);
    let expected = [
        ("Secret", "example-admin-token"),
        ("Secret", "example-internode"),
        ("ConfigMap", "example-config"),
        ("Service", "example-peers"),
        ("Service", "example"),
        ("NetworkPolicy", "example"),
        ("PodDisruptionBudget", "example"),
        ("StatefulSet", "example"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
        .collect();
    assert_eq!(kinds_and_names(&rendered), expected);
    for object in &rendered {
        assert!(object["apiVersion"].as_str().is_some(), "{object:?}");
        assert_eq!(object["metadata"]["namespace"], "default");
    }
    let policy = &rendered[5];
    let operator_ns = &policy["spec"]["ingress"][0]["from"][1]["namespaceSelector"]["matchLabels"]
        ["kubernetes.io/metadata.name"];
    assert_eq!(operator_ns, "dynamo-system");
    // Two runs draw two different tokens.
    let again = objects(&render(&[]));
    assert_ne!(rendered[0]["data"]["token"], again[0]["data"]["token"]);
    // And the admin token and internode secret are drawn apart.
    assert_ne!(rendered[0]["data"]["token"], rendered[1]["data"]["token"]);
}

#[test]
fn every_cluster_of_a_file_is_rendered_and_other_kinds_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clusters.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: mine}\nstringData: {token: t}\n---\n\
         apiVersion: dynamo.example.org/v1alpha1\nkind: DynamoCluster\n\
         metadata: {name: a, namespace: prod}\nspec: {size: 3, image: i, adminTokenSecret: mine}\n---\n\
         apiVersion: dynamo.example.org/v1alpha1\nkind: DynamoCluster\n\
         metadata: {name: b}\nspec: {size: 4, image: i}\n",
    )
    .unwrap();
    let output = render(&[
        file.to_str().unwrap(),
        "--namespace",
        "dev",
        "--operator-namespace",
        "ops",
    ]);
    assert!(output.status.success(), "{output:?}");
    let objects = objects(&output);
    let names = kinds_and_names(&objects);
    // A user-named token Secret: no admin token generated for `a`; one for `b`. Both
    // get their internode secret.
    assert_eq!(names.iter().filter(|(k, _)| k == "Secret").count(), 3);
    for secret in ["a-internode", "b-admin-token", "b-internode"] {
        assert!(names.contains(&("Secret".to_owned(), secret.to_owned())));
    }
    assert_eq!(objects.len(), 7 + 8);
    let namespaces: Vec<&str> = objects
        .iter()
        .map(|o| o["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces[..7], ["prod"; 7]);
    assert_eq!(namespaces[7..], ["dev"; 8]);
    let sts = objects
        .iter()
        .rfind(|o| o["kind"] == "StatefulSet")
        .unwrap();
    assert_eq!(sts["spec"]["replicas"], 4);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("skipping document 1 (kind Secret)"),
        "{stderr}"
    );
}

#[test]
fn bad_input_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "apiVersion: dynamo.example.org/v1alpha1\nkind: DynamoCluster\nmetadata: {name: a}\n\
             spec: {size: 2, image: i}\n",
            "size 2 is smaller than replication factor 3",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            "holds no DynamoCluster",
        ),
        (
            "apiVersion: dynamo.example.org/v1alpha1\nkind: DynamoCluster\nmetadata: {name: a}\n\
             spec: {image: i}\n",
            "not a valid DynamoCluster",
        ),
        ("kind: [unclosed\n", "not YAML"),
    ];
    for (index, (text, message)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("{index}.yaml"));
        std::fs::write(&file, text).unwrap();
        let output = render(&[file.to_str().unwrap()]);
        assert!(!output.status.success(), "{text}");
        assert!(output.stdout.is_empty(), "nothing printed on failure");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{text}: {stderr}");
    }
    let output = render(&["/nonexistent/cluster.yaml"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("reading /nonexistent"));
}

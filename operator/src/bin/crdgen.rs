//! Prints the `DynamoCluster` CustomResourceDefinition as YAML, as committed in
//! `crds/dynamocluster.yaml` (CI fails when the two differ). Words YAML 1.1 reads as
//! booleans (the property `n`) are quoted, so kubectl and Helm read it as written.

use std::io::Write;
use std::process::ExitCode;

use dynamo_operator::crd::DynamoCluster;
use kube::CustomResourceExt;

fn main() -> ExitCode {
    let yaml = match dynamo_operator::yaml::to_string(&DynamoCluster::crd()) {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: cannot serialize the CRD: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(yaml.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crdgen: cannot write: {err}");
            ExitCode::FAILURE
        }
    }
}

//! deploy/ (issue 7 item 6): the container image, the compose file and the
//! Kubernetes manifests are checked without a container engine or a
//! cluster, by `scripts/validate-deploy`: the manifests against the
//! Kubernetes schemas (strict, offline), compose.yaml against the
//! compose-spec schema, the Dockerfile's shape, and every configuration
//! under deploy/ with `hedui config check` of the broker built here. This
//! test runs the script and fails with its output; it never skips.

use std::{path::Path, process::Command};

use hedui_tests::workspace_bin;

#[test]
fn the_deployment_files_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/tools (it installs kubernetes-validate, check-jsonschema and PyYAML into .venv)",
        python.display()
    );
    let out = Command::new(root.join("scripts/validate-deploy"))
        .current_dir(&root)
        .env("HEDUI_BIN", workspace_bin("hedui"))
        .output()
        .expect("scripts/validate-deploy starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/validate-deploy failed ({}):\n{text}",
        out.status
    );
    assert!(text.contains("validate-deploy: ok"), "{text}");
}

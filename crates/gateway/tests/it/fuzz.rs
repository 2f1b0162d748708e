//! Schemathesis (PyPI) generates requests from `proto/openapi.yaml` against the live gateway,
//! in every phase (examples, coverage, fuzzing, stateful) with every check: no input may
//! produce a 5xx, every answer must match the document (status, content type, body schema),
//! a request the document allows must not be refused and one it forbids must not be
//! accepted. `scripts/test` installs the tool and sets `AIOKA_SCHEMATHESIS`.

use std::process::Command;

use aioka_core::tier::Tier;

use crate::App;

fn schemathesis() -> String {
    if let Ok(path) = std::env::var("AIOKA_SCHEMATHESIS") {
        return path;
    }
    let local = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.run/tools/fuzz/bin/schemathesis"
    );
    assert!(
        std::path::Path::new(local).exists(),
        "schemathesis is not installed: run scripts/test (it installs it into .run/tools/fuzz)"
    );
    local.to_owned()
}

fn fuzz(app: &App, key: &str, only: Option<&str>) {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/openapi.yaml");
    // CI runs 25 examples per operation with a fixed seed (about 10 s); a deeper search:
    // AIOKA_FUZZ_EXAMPLES=100 AIOKA_FUZZ_SEED=random cargo test -p aioka-gateway --test it fuzz
    let examples = std::env::var("AIOKA_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".to_owned());
    let seed = std::env::var("AIOKA_FUZZ_SEED").unwrap_or_else(|_| "7".to_owned());
    let mut command = Command::new(schemathesis());
    command
        .args(["run", spec, "--url", &app.base])
        .args(["-H", &format!("X-API-Key: {key}")])
        .args(["--checks", "all"])
        .args(["--max-examples", &examples, "--no-color"]);
    if seed != "random" {
        command.args(["--seed", &seed]);
    }
    if let Some(path) = only {
        // The links (registration to the delivery log) leave the filter: no stateful phase.
        command
            .args(["--include-path", path])
            .args(["--phases", "examples,coverage,fuzzing"]);
    } else {
        command.args(["--phases", "examples,coverage,fuzzing,stateful"]);
    }
    let output = command.output().expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_requests_never_get_a_5xx_or_an_undocumented_answer() {
    let app = App::spawn().await;
    let customer = app.customer(Tier::Enterprise).await;
    let producer = app.producer().await;
    let base = app.base.clone();
    let app = std::sync::Arc::new(app);
    let runner = app.clone();
    tokio::task::spawn_blocking(move || {
        fuzz(&runner, &customer, None);
        fuzz(&runner, &producer, Some("/v1/events"));
    })
    .await
    .unwrap();
    assert!(!base.is_empty());
}

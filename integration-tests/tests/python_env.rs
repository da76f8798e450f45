//! The interop tests' Python environment has the pinned Celery.

#[test]
fn venv_has_celery_5_7() {
    let out = std::process::Command::new(integration_tests::python())
        .args(["-c", "import celery, kombu; print(celery.__version__, kombu.__version__)"])
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5.7.0 5.7.0");
}

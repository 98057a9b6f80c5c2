"""What a job leaves behind: its records (`recording`, `batch`), tables (`tables`), figures
(`plots`), a batched sweep's report (`batch_report`), provenance (`provenance`), and the MLflow
store they go to (`tracking`, the only module that imports MLflow); on the terminal, the
progress bar (`progress`) and the libraries' start-up lines held back (`chatter`)."""

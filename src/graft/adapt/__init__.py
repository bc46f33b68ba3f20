"""Transfer without target labels: domain-adaptation terms (entropy, MCC, self-training, DANN),
the batches that mix source and target examples, and their set-up from the config."""

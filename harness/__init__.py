"""finetune-sweeps: which fine-tuning technique and hyperparameters give the best accuracy
for the money. `harness-train` runs one trial; `harness-sweep` runs an Optuna sweep."""

__version__ = "0.1.0"

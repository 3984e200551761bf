"""Joint model training on common customers: a job file, local preparation, secure
logistic regression, and the per-party pipeline (PSI -> align -> share -> train ->
evaluate)."""

from veilpay.ml.job import Job, load_job
from veilpay.ml.metrics import auc, average_precision, ks
from veilpay.ml.pipeline import JobFailed, run_training
from veilpay.ml.prep import Prep, fit_prep
from veilpay.ml.score import run_scoring
from veilpay.ml.sslr import sigmoid_approx, train_lr

__all__ = ["Job", "JobFailed", "Prep", "auc", "average_precision", "fit_prep", "ks", "load_job", "run_scoring",
           "run_training", "sigmoid_approx", "train_lr"]

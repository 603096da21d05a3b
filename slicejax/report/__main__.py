"""`python -m slicejax.report --workdir=RUN [--workdir=RUN ...]`: the study report of finished runs."""

from absl import app

from slicejax.report import summary

if __name__ == "__main__":
  summary.define_flags()
  app.run(summary.main)

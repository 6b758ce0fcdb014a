"""Human evaluation as in GaVaMoE's Table 4: a blind rating study of several methods' explanations on the same
pairs (study.py), a page that collects P / Q / U ratings (app.py, static/), the ratings file (ratings.py), an LLM
judge on the same rubric (judge.py), agreement (agreement.py) and the report (report.py)."""
from explainrec.rate.study import Study, create_study, load_study

__all__ = ["Study", "create_study", "load_study"]

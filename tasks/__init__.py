"""lm-eval task configs of lm-eval-lingreg (`lingreg_ppl` and `lingreg_ppl_<iso>`)."""

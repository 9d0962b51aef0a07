"""lm-eval task configs of lm-eval-lingreg: `lingreg_ppl_<iso>`, `lingreg_gen_<iso>`, `lingreg_mt_<src>_<tgt>` and their groups."""

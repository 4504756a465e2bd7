"""ActivityNet Captions (Krishna et al., ICCV 2017) dense captioning: densevid_eval's precision, recall,
BLEU, METEOR, ROUGE-L and CIDEr over tIoU 0.3/0.5/0.7/0.9, plus SODA_c. Predictions: the challenge JSON."""
from __future__ import annotations

from damo.data.formats import activitynet as reader
from damo.eval.benchmark import Benchmark
from damo.eval.captions import UNMATCHED_CAPTION, score_dense_captions

BENCHMARK = Benchmark(name="activitynet-captions", evaluator="densevid_eval (TimeChat eval_dvc.py); fujiso/SODA",
                      reader=reader, scorer=score_dense_captions, options=(UNMATCHED_CAPTION,))

"""YouCook2 (Zhou et al., AAAI 2018) dense captioning, scored as PDVC scores it: ActivityNet's densevid_eval
on the ActivityNet-style annotation, plus SODA_c. Predictions: the ActivityNet challenge JSON."""
from __future__ import annotations

from damo.data.formats import youcook2 as reader
from damo.eval.benchmark import Benchmark
from damo.eval.captions import UNMATCHED_CAPTION, score_dense_captions

BENCHMARK = Benchmark(name="youcook2", evaluator="densevid_eval as PDVC runs it on YouCook2; fujiso/SODA",
                      reader=reader, scorer=score_dense_captions, options=(UNMATCHED_CAPTION,))

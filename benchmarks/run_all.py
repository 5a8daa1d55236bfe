"""Every benchmark at a quick size, one JSON document: `make bench` writes it to bench.json."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attention  # noqa: E402
import compile_time  # noqa: E402
import corpus_build  # noqa: E402
import data_pipeline  # noqa: E402
import decode  # noqa: E402
import memory  # noqa: E402
import resume  # noqa: E402
import train_step  # noqa: E402

QUICK = {
    'train_step': (train_step, ['--config=cpu', '--repeats=3']),
    'decode': (decode, ['--repeats=2', '--new_tokens=32']),
    'data_pipeline': (data_pipeline, ['--batches=20']),
    'memory': (memory, ['--lengths=128,256,512', '--batches=1,4']),
    'resume': (resume, ['--steps=100,20000']),
    'compile_time': (compile_time, []),
    'corpus_build': (corpus_build, ['--utterances=400', '--serial_utterances=30']),
    # Every length of its contract (512-8192), one timed step each: about 10 minutes.
    'attention': (attention, ['--repeats=1']),
}

if __name__ == '__main__':
  out = sys.argv[1] if len(sys.argv) > 1 else 'bench.json'
  results = {name: module.main(argv) for name, (module, argv) in QUICK.items()}
  with open(out, 'w') as f:
    json.dump(results, f, indent=2)
  print(f'wrote {out}')

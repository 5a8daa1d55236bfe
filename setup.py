"""zipper_jax: fuse independently pre-trained decoder towers with gated cross-attention."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (_HERE / 'requirements' / name).read_text().splitlines()
  return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setuptools.setup(
    name='zipper_jax',
    version='0.1.0',
    description='Multi-tower decoders fused by gated cross-attention (Zipper), in JAX/Flax.',
    long_description=(_HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['zipper_jax', 'zipper_jax.*', 'tasks', 'tasks.*']),
    package_data={'zipper_jax': ['h100_sxm.txtpb']},  # the H100 `zipper compile` targets
    # The pinned stack, tested together. `make install` installs the last two with --no-deps:
    # tensorflow-text declares the full `tensorflow` wheel, which would land beside tensorflow-cpu.
    install_requires=_requirements('base.txt') + _requirements('no-deps.txt'),
    extras_require={'test': _requirements('test.txt')},
    entry_points={
        'console_scripts': ['zipper = zipper_jax.main:main'],
        # Commands that products built on the framework add to `zipper` (zipper_jax/main.py).
        'zipper.commands': [
            'corpus = zipper_jax.speech.corpus:add_parser',
            'transcribe_speak = zipper_jax.speech.inference:add_parser',
            'report = zipper_jax.speech.report:add_parser',
            'import_export = zipper_jax.interop.import_export:add_parser',
        ],
    },
)

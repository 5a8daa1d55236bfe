"""seqio vocabularies, tasks and mixtures. Importing a family's module registers its tasks:
`import tasks.speech_text` (the default corpus)."""

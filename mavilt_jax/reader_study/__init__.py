"""A blinded reader study of generated reports and images, as the paper's Table V.

  python -m mavilt_jax.reader_study create --predictions A.jsonl B.jsonl --out STUDY
      samples studies (seeded, stratified by finding) from prediction files of any systems (the
      evaluation's records format, ``mavilt_jax/evaluation/records.py``) and writes the blinded
      cases (opaque ids, images re-encoded into STUDY) and, apart, the key that unblinds them;
  python -m mavilt_jax.reader_study serve STUDY
      serves the rating page on 127.0.0.1; ratings go to STUDY/ratings.sqlite as they are given;
  python -m mavilt_jax.reader_study report STUDY
      unblinds and writes Table V (mean rating per system and scale with bootstrap CIs,
      Krippendorff's alpha between readers, intra-reader consistency on duplicate cases, paired
      comparisons) in the evaluation's report card format.

  study      the study folder: creating it, reading its blinded cases and its key
  store      the SQLite store of readers and ratings
  server     the rating page (standard-library HTTP server, plain HTML forms)
  stats      agreement, consistency and paired comparisons
  report     Table V from a study's ratings
"""

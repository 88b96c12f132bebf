"""Evaluation of the three tasks (Tables I-III of the paper).

  nlg, labeler, clinical        report generation: pycocoevalcap metrics, the CheXpert-style
                                report labeler, clinical efficacy
  frechet, inception, conditional
                                report -> image: Frechet distance (phi or Inception-v3 features),
                                conditional correctness by an independent classifier
  vqa_metrics, real_vqa         VQA: accuracy, yes/no AUROC; a VQA set for real IU X-ray reports
  bootstrap, records, suite, report_card, generate
                                CIs over studies, prediction records, scoring, the report card,
                                generation from a checkpoint (``python -m mavilt_jax.evaluate``)
  iu_mesh                       the labeler against IU X-ray's MeSH annotations
  image_metrics                 reconstruction metrics of the tokenizer (PSNR, SSIM, code usage)
"""

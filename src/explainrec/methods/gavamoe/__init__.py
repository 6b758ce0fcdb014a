"""GaVaMoE (Tang et al., 2024): stage 1 VAE-GMM pair clustering, stage 2 multi-gated MoE LLM.

    config         every setting (stage 1, surgery, stage 2), with defaults and limits
    method         the registry entry ``gavamoe``;  stage1_method: the entry ``vae-gmm`` (stage 1 alone)
    stage 1        vae_gmm (the model), gmm_init (prior from sklearn GaussianMixture), stage1_train (the loop),
                   stage1_eval (clusters.csv, metrics, plots)
    stage 2        moe_ffn + routing (the multi-gated MoE layer), surgery (upcycling every LLaMA MLP),
                   modeling (the GaVaMoE module), prompting, recipe (training), persist (the model folder),
                   explainer (explanations with cluster and top experts)

Submodules are imported on use, so that importing one part (e.g. the MoE layer) does not pull in scikit-learn or
matplotlib.
"""

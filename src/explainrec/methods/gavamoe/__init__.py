"""GaVaMoE (Tang et al., 2024): stage 1 VAE-GMM pair clustering, stage 2 multi-gated MoE LLM.

Stage 1 lives in ``vae_gmm`` (the model), ``gmm_init`` (prior from sklearn GaussianMixture) and ``stage1``
(the recipe: ``fit_clusters``, ``load_stage1``). Submodules are imported on use, so that importing one
part (e.g. the MoE layer) does not pull in scikit-learn or matplotlib.
"""

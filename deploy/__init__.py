"""`make deploy` / `make undeploy`: put the manifests on the current kubectl context and the compiled pipeline on
Kubeflow Pipelines. Outside `shoprank/` because it uses the KFP client (shoprank must not import kfp).

    python -m deploy.cli deploy --overlay gpu --serving-image REG/shoprank-serving:TAG ...
    python -m deploy.cli undeploy --overlay gpu
    python -m deploy.cli check --overlay gpu ...      (prerequisites only)
"""

__all__: list[str] = []

"""The packed artifact in the MLflow model registry, as a pyfunc that generates at any precision.

`mlflow.pyfunc.load_model("models:/anyprec-<model>/<version>").predict([{"prompt": "...", "bits": 4}])`
takes a list of requests (prompt, optional bits and max_new_tokens) and returns the generated
texts. A new version is registered only when the artifact's DVC md5 differs from
the latest version's (a cached re-run does not pile up identical versions); the alias
`@latest-nested` always names the version the last flow run produced.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
from prefect import task
from pydantic import BaseModel

from anyprec.tasks.caching import StageOutput
from anyprec.tasks.layout import Layout
from anyprec.tasks.tracking import setup_mlflow

ARTIFACT_KEY = "packed"


class GenerationRequest(BaseModel):
    """One pyfunc input row: a prompt, the bit-width to use (None: the highest) and a length."""

    prompt: str
    bits: int | None = None
    max_new_tokens: int = 16


class AnyPrecisionPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: one packed artifact serving every bit-width it holds."""

    def load_context(self, context: Any) -> None:
        from anyprec.runtime import load_anyprec

        self.apm = load_anyprec(context.artifacts[ARTIFACT_KEY])

    def predict(self, context: Any, model_input: list[GenerationRequest], params: dict[str, Any] | None = None) -> list[str]:
        """Greedy continuations of each request's prompt at its bit-width."""
        texts = []
        for request in model_input:
            ids = self.apm.tokenizer(request.prompt, return_tensors="pt")["input_ids"]
            out = self.apm.generate(ids, precision=request.bits or self.apm.current_precision,
                                    max_new_tokens=request.max_new_tokens, do_sample=False)
            texts.append(self.apm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return texts


ALIAS = "latest-nested"


def _latest_md5(client: Any, name: str) -> str | None:
    versions = client.search_model_versions(f"name='{name}'", order_by=["version_number DESC"], max_results=1)
    return versions[0].tags.get("dvc_md5") if versions else None


@task(name="register-model")
def register_artifact(layout: Layout, model: str, packed: StageOutput, artifact_md5: str, parent_run_id: str) -> str:
    """Register the artifact under `<registered_model_prefix><model>`; return the version (new or existing)."""
    import mlflow
    from mlflow import MlflowClient

    setup_mlflow(layout)
    client = MlflowClient()
    name = f"{layout.params.pipeline.registered_model_prefix}{model}"
    if client.search_registered_models(f"name='{name}'") and _latest_md5(client, name) == artifact_md5:
        latest = client.search_model_versions(f"name='{name}'", order_by=["version_number DESC"], max_results=1)
        version = str(latest[0].version)
    else:
        with mlflow.start_run(run_id=parent_run_id):
            info = mlflow.pyfunc.log_model(
                name="anyprec-model",
                python_model=AnyPrecisionPyfunc(),
                artifacts={ARTIFACT_KEY: packed.path},
                pip_requirements=["anyprec"],
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        client.set_model_version_tag(name, version, "dvc_md5", artifact_md5)
        client.set_model_version_tag(name, version, "artifact_digest", packed.digest)
    client.set_registered_model_alias(name, ALIAS, version)
    return version

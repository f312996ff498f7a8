"""``/v1/templates``: the configured templates, and a preview of one rendered with data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app import service
from app.api.body import JSONBodyRoute
from app.api.deps import ReadScope, RuntimeDep, SendScope
from app.api.problems import AUTH_ERRORS, error_responses
from app.api.schemas import (
    NAME,
    TemplateList,
    TemplateOut,
    TemplatePreview,
    TemplatePreviewRequest,
)

router = APIRouter(
    prefix="/v1/templates", tags=["templates"], responses=AUTH_ERRORS, route_class=JSONBodyRoute
)


@router.get(
    "",
    operation_id="list_templates",
    response_model=TemplateList,
    summary="Configured templates, with the variables each uses",
    responses=error_responses(503),
)
async def list_templates(principal: ReadScope, runtime: RuntimeDep) -> TemplateList:
    return TemplateList(
        items=[
            TemplateOut(
                name=name,
                fields=list(template.fields),
                overrides=list(template.override_types),
                variables=list(template.variables),
            )
            for name, template in runtime.config.templates.items()
        ]
    )


@router.post(
    "/{name}/preview",
    operation_id="preview_template",
    response_model=TemplatePreview,
    summary="Render a template with data, without sending anything",
    description=(
        "What a notification naming this template and data would store and send. A variable "
        "missing from data, attribute access the sandbox forbids, or a render past its limits "
        "(loop steps, time, output size): 422 naming the field. Needs the send scope."
    ),
    responses=error_responses(404, 413, 415, 422, 503),
)
async def preview_template(
    name: Annotated[str, Path(max_length=64, pattern=NAME)],
    body: TemplatePreviewRequest,
    principal: SendScope,
    runtime: RuntimeDep,
) -> TemplatePreview:
    result = service.preview(runtime.config, name, body.data)
    return TemplatePreview(
        template=result.template,
        subject=result.subject,
        text=result.text,
        html=result.html,
        rendered=result.overrides,
    )

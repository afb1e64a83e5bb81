"""``peregrine.v1.JobService``: asynchronous inference over gRPC, a thin edge over :mod:`...jobs.service`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from peregrine.proto import jobs_pb2 as pb
from peregrine.proto import jobs_pb2_grpc as pb_grpc

from ...core.errors import PeregrineError
from ...jobs.service import JobService, JobSpec
from ...jobs.store import JobRecord
from .status import check, status_of, unary

T = TypeVar("T")
JOB_ID_HEADER = "peregrine-job-id"  # Submit's initial metadata: the job's id, sent before the payload is read


def job_message(record: JobRecord) -> pb.Job:
    return pb.Job(
        job_id=record.job_id, state=pb.JobState.Value(record.state), model_name=record.model_name,
        model_version=record.model_version, kind=record.kind, total_bytes=record.total_bytes,
        received_bytes=record.received_bytes, items_total=record.items_total, items_done=record.items_done,
        items_failed=record.items_failed, eta_s=JobService.eta_s(record), error=record.error,
        created_unix_ms=record.created_ms, started_unix_ms=record.started_ms, ended_unix_ms=record.ended_ms,
        expires_unix_ms=record.expires_ms, result_bytes=record.result_bytes if record.state == "SUCCEEDED" else 0,
        result_format=record.result_format, client_tag=record.client_tag)


def _spec(message: pb.JobSpec) -> JobSpec:
    return JobSpec(model_name=message.model_name, model_version=message.model_version, kind=message.kind,
                   total_bytes=message.total_bytes, sha256=message.sha256, input_location=message.input_location,
                   job_id=message.job_id, resume_offset=message.resume_offset, parameters=dict(message.parameters),
                   time_limit_s=message.time_limit_s, client_tag=message.client_tag, notify_url=message.notify_url)


async def _chunks(messages: AsyncIterator[pb.SubmitChunk]) -> AsyncIterator[tuple[JobSpec | None, bytes]]:
    async for message in messages:
        check(message)
        yield (_spec(message.spec) if message.HasField("spec") else None), message.data


async def _streamed(request: Any, context: grpc.aio.ServicerContext,
                    answers: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    """A server stream's answers; an error (before or during) ends the call with its status."""
    try:
        check(request)
        async for answer in answers():
            yield answer
    except PeregrineError as e:
        code, message = status_of(e)
        await context.abort(code, message)


class JobServicer(pb_grpc.JobServiceServicer):
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    async def Submit(self, request_iterator: AsyncIterator[pb.SubmitChunk],
                     context: grpc.aio.ServicerContext) -> pb.Job:
        try:
            async def created(job_id: str) -> None:  # the client learns its job's id before uploading
                await context.send_initial_metadata(((JOB_ID_HEADER, job_id),))

            return job_message(await self.jobs.submit(_chunks(request_iterator), created))
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            code, message = status_of(e)
            await context.abort(code, message)

    @unary
    async def GetJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.Job:
        return job_message(await self.jobs.get(request.job_id))

    async def WatchJob(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Job]:
        async for record in _streamed(request, context, lambda: self.jobs.watch(request.job_id)):
            yield job_message(record)

    async def GetResult(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ResultChunk]:
        async for offset, data, summary in _streamed(request, context,
                                                      lambda: self.jobs.result(request.job_id, request.offset)):
            yield pb.ResultChunk(offset=offset, data=data, summary_json=summary)

    @unary
    async def CancelJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.Job:
        return job_message(await self.jobs.cancel(request.job_id))

    @unary
    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        state = pb.JobState.Name(request.state) if request.state else ""
        records, token = await self.jobs.list(state, request.model_name, request.page_size, request.page_token)
        return pb.ListJobsResponse(jobs=[job_message(r) for r in records], next_page_token=token)

    @unary
    async def DeleteJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.DeleteJobResponse:
        await self.jobs.delete(request.job_id)
        return pb.DeleteJobResponse()

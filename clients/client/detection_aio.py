"""``AsyncDetectionClient``: the asyncio (``grpc.aio``) twin of :class:`~peregrine.client.DetectionClient`."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
from peregrine.proto import detection_pb2 as det

from .channel import DEFAULT_DEADLINE_S, MAX_MESSAGE_BYTES, ChannelSettings, RetryPolicy, TlsOptions
from .detection import (
    DEFAULT_MODEL,
    Detection,
    DetectResult,
    FrameInput,
    FrameResult,
    FrameSender,
    ImageInput,
    detect_request,
    detect_result,
    detection_methods,
    options_message,
)
from .errors import PeregrineClientError


class AsyncDetectionClient:
    """An asyncio client of ``peregrine.v1.DetectionService``: the same calls, arguments, deadlines,
    retries and errors as :class:`~peregrine.client.DetectionClient`, as coroutines. Create it inside the
    event loop that uses it; ``await close()`` or use ``async with``."""

    def __init__(
        self,
        url: str | Sequence[str] = "127.0.0.1:8001",
        *,
        tls: TlsOptions | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        deadline_s: float | None = DEFAULT_DEADLINE_S,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.settings = ChannelSettings.of(url, tls, token, headers, deadline_s, retry, max_message_bytes,
                                           channel_options)
        self._channel = self.settings.aio_channel()
        self._metadata = self.settings.metadata()
        self._detect, self._stream = detection_methods(self._channel)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncDetectionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def detect(
        self,
        image: ImageInput,
        *,
        model: str = DEFAULT_MODEL,
        version: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        deadline_s: float | None = None,
    ) -> list[Detection]:
        """See :meth:`peregrine.client.DetectionClient.detect`."""
        result = await self.detect_with_timings(
            [image], model=model, version=version, score_threshold=score_threshold, iou_threshold=iou_threshold,
            max_detections=max_detections, classes=classes, priority=priority, timeout_us=timeout_us,
            deadline_s=deadline_s)
        return result.detections[0]

    async def detect_many(
        self,
        images: Sequence[ImageInput],
        *,
        model: str = DEFAULT_MODEL,
        version: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        deadline_s: float | None = None,
    ) -> list[list[Detection]]:
        """See :meth:`peregrine.client.DetectionClient.detect_many`."""
        result = await self.detect_with_timings(
            images, model=model, version=version, score_threshold=score_threshold, iou_threshold=iou_threshold,
            max_detections=max_detections, classes=classes, priority=priority, timeout_us=timeout_us,
            deadline_s=deadline_s)
        return result.detections

    async def detect_with_timings(
        self,
        images: Sequence[ImageInput],
        *,
        model: str = DEFAULT_MODEL,
        version: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        deadline_s: float | None = None,
        request_id: str = "",
    ) -> DetectResult:
        """See :meth:`peregrine.client.DetectionClient.detect_with_timings`."""
        request = detect_request(images, model, version, score_threshold, iou_threshold, max_detections, classes,
                                 priority, timeout_us, request_id)
        try:
            msg = await self._detect(request, timeout=self.settings.timeout(deadline_s), metadata=self._metadata)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, "Detect") from None
        return detect_result(msg)

    async def stream(
        self,
        frames: Iterable[FrameInput] | AsyncIterable[FrameInput],
        *,
        model: str = DEFAULT_MODEL,
        version: str = "",
        deadline_s: float | None = None,
        max_in_flight: int | None = None,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int] | None = None,
        priority: int = 0,
        stream_deadline_s: float | None = None,
    ) -> AsyncIterator[FrameResult]:
        """See :meth:`peregrine.client.DetectionClient.stream`; ``frames`` may be an async iterable (a plain
        iterable is read on the event loop, so it must not block)."""
        sender = FrameSender(model, version, options_message(score_threshold, iou_threshold, max_detections, classes),
                             self.settings.timeout(deadline_s), max_in_flight, priority)

        async def messages() -> AsyncIterator[det.StreamFrame]:
            try:
                if isinstance(frames, AsyncIterable):
                    async for item in frames:
                        yield sender.message(item)
                else:
                    for item in frames:
                        yield sender.message(item)
            except Exception as e:
                sender.failure = e

        timeout = None if stream_deadline_s is None else self.settings.timeout(stream_deadline_s)
        call = self._stream(messages(), timeout=timeout, metadata=self._metadata)
        try:
            async for msg in call:
                yield sender.result(msg)
        except grpc.RpcError as e:
            if sender.failure is not None:
                raise sender.failure from None
            raise PeregrineClientError.from_rpc_error(e, "DetectStream") from None
        finally:
            call.cancel()
        if sender.failure is not None:
            raise sender.failure

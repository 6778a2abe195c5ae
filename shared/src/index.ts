export {
  ErrorCode, RegionsyncError, InvalidOptionError, MalformedEventError, BadSignatureError, BadPathError, VerifyReadError,
  UndecryptableError, TargetUnreachableError, isRegionsyncError, errorCodeOf
} from './errors.js'
export {
  DEFAULT_NAMESPACE, names, validateRegion, validateNamespace
} from './names.js'
export {
  DEFAULT_PARTITIONS, MAX_PARTITIONS, partitionOf, eventSubject, partitionFilter, consumerName, partitionOfSubject, parseConsumerName
} from './partitioning.js'
export type { Names } from './names.js'
export {
  EVENT_VERSION, MUTATION_METHODS, IDENTITY_MODES, createEvent, encodeEvent, decodeEvent, eventBody
} from './event.js'
export type { RegionsyncEvent, NewEventInput, MutationMethod, IdentityMode, CreatedResource, BodyEncoding } from './event.js'
export { openEventBody } from './sealed-body.js'
export {
  TRACEPARENT_HEADER, TRACESTATE_HEADER, parseTraceparent, formatTraceparent, isTracestate, traceFromHeaders, childTraceparent
} from './trace-context.js'
export type { EventTrace, ParsedTraceparent } from './trace-context.js'
export { loadOtel } from './otel.js'
export type { Otel } from './otel.js'
export {
  EVENT_SIGNATURE_HEADER, REPLAY_SIGNATURE_HEADER, REPLAY_ORIGIN_HEADER, REPLAY_SEQ_HEADER, REPLAY_RESOURCE_HEADER, IDEMPOTENCY_KEY_HEADER, MIN_KEY_LENGTH,
  DEV_SIGNING_KEY, DEFAULT_REPLAY_TOLERANCE_MS, WEBHOOK_ID_HEADER, WEBHOOK_TIMESTAMP_HEADER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_SECRET_LABEL,
  createSigner, parseSigningKey, parseSigningKeys, webhookSecret
} from './signing.js'
export type { Signer, ReplayIdentity } from './signing.js'
export {
  DEFAULT_NATS_URL, SERVER_FEATURES, connectNats, serverVersion, serverSupports, requireServerFeature, serverMaxPayload
} from './nats.js'
export type { NatsConnectOptions, ServerFeature } from './nats.js'
export {
  DEFAULT_MAX_AGE_MS, DEFAULT_DUPLICATE_WINDOW_MS, DEFAULT_ACK_WAIT_MS, RECORD_TTL_MARGIN_MS, recordTtlMs, defaultStreamSettings, parseStreamSettings,
  ensureEventStream, eventStreamPartitions, ensureDlqStream, ensurePartitionConsumer, parseStartFrom, retryTimeouts, isNotFound
} from './stream-setup.js'
export { nextBySubject, parseAckSubject, readSubjectRange, walkSubject, type StoredMessage } from './stream-read.js'
export type { StreamSettings, EventStreamInfo, StartFrom, PartitionConsumerSettings, PartitionConsumer } from './stream-setup.js'
export { regionLag, listRegions } from './lag.js'
export { parseEncryptionKey, sealHeaders, openHeaders } from './sealed-headers.js'
export type { RegionLag } from './lag.js'
export { createLogger, DEFAULT_LOG_LEVEL } from './logger.js'
export type { Logger } from './logger.js'
export { findCreatedId } from './created-id.js'
export { RegionRecords } from './region-records.js'
export type { RegionRecordsSettings, RecordEntry } from './region-records.js'
export { InboxClient } from './inbox-client.js'
export { WriteCoalescer, coalescerOf } from './write-coalescer.js'
export type { PubAck } from './inbox-client.js'
export { verifyBucket, writeVerifySummaries, readVerifySummaries } from './verify-summary.js'
export type { VerifySummary } from './verify-summary.js'
export { retryUntil, type RetryUntilOptions } from './retry.js'

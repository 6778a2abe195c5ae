export {
  ErrorCode, RegionsyncError, InvalidOptionError, MalformedEventError, BadSignatureError, BadPathError, VerifyReadError, isRegionsyncError
} from '@regionsync/shared'

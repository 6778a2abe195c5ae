export {
  ErrorCode, RegionsyncError, InvalidOptionError, MalformedEventError, BadSignatureError, BadPathError, isRegionsyncError
} from '@regionsync/shared'

# frozen_string_literal: true

module TaskerCore
  module Messaging
    # Every failure of the messaging layer: the Rust library's MessagingError, one class per
    # variant. Rescue RetryableError for what may succeed later (connection, timeout, open
    # circuit, backpressure), PermanentError for what cannot (bad input, missing queue, ...).
    # Messages never contain a password.
    class Error < StandardError
      # Whether the same call may succeed later.
      def retryable?
        false
      end
    end

    # The same call may succeed later: retry with backoff.
    class RetryableError < Error
      def retryable?
        true
      end
    end

    # Repeating the call cannot help.
    class PermanentError < Error; end

    # Raised by the library for a provider's own error, whichever its class; rescue this
    # module to catch both.
    module ProviderError
      # The provider's name (e.g. "pgmq").
      attr_reader :provider
    end

    class ConnectionError < RetryableError
      attr_reader :provider
    end
    class TimeoutError < RetryableError; end
    class CircuitOpen < RetryableError; end
    class Backpressure < RetryableError; end
    # A provider error the provider classifies as transient (throttling, failover, ...).
    class RetryableProviderError < RetryableError
      include ProviderError
    end

    class InvalidQueueName < PermanentError
      attr_reader :queue
    end
    class QueueNotFound < PermanentError
      attr_reader :queue
    end
    class PayloadTooLarge < PermanentError
      attr_reader :size, :max
    end
    class SerializationError < PermanentError; end
    class InvalidReceipt < PermanentError
      attr_reader :queue
    end
    class Unsupported < PermanentError
      attr_reader :provider
    end
    class ProviderUnavailable < PermanentError
      attr_reader :provider
    end
    class ResourcesExceeded < PermanentError; end
    class ConfigurationError < PermanentError
      # The configuration key at fault (e.g. "queues.max_receive_count").
      attr_reader :key
    end
    class NotInitialized < PermanentError; end
    class PermanentProviderError < PermanentError
      include ProviderError
    end

    # A failure of the binding itself (it should not happen; please report it).
    class NativeError < Error; end
    # A blocking call was interrupted without an exception to raise.
    class Interrupted < RetryableError; end
  end
end

# frozen_string_literal: true

# TaskerCore messaging for Ruby: the plan's MessageService, backed by the Rust library
# tasker-messaging through a native extension, so Ruby workers get the contract every provider
# passes in the conformance suite (docs/semantics.md) and every provider the library has.
#
#   require "tasker_core"
#   service = TaskerCore::Services::MessageServiceFactory.create(provider: :in_memory)
#
# See docs/ruby.md.

require "json"
require_relative "tasker_core/version"
require_relative "tasker_core/messaging/errors"

begin
  require_relative "tasker_core/tasker_messaging_native"
rescue LoadError => e
  raise LoadError, "tasker_core: the native extension is not built (#{e.message}); " \
                   "run bindings/ruby/build.sh"
end

require_relative "tasker_core/messaging/received_message"
require_relative "tasker_core/types/simple_step_message"
require_relative "tasker_core/services/message_service"
require_relative "tasker_core/services/message_service_factory"

# frozen_string_literal: true

require_relative "lib/tasker_core/version"

# A normal gem for users with a gem registry: `gem build tasker_messaging.gemspec`, then
# installing it compiles the Rust extension through rb_sys (extconf.rb). Here, without the
# registry, bindings/ruby/build.sh builds the same extension with cargo alone.
Gem::Specification.new do |spec|
  spec.name = "tasker_messaging"
  spec.version = TaskerCore::VERSION
  spec.summary = "TaskerCore::Services::MessageService over the Rust tasker-messaging library"
  spec.description = "One pull-based queue interface (PGMQ, RabbitMQ, Redis, SQS, NATS " \
                     "JetStream, Kafka, in-memory) for Ruby workers, as a native extension " \
                     "over the Rust library, so Ruby gets the contract its conformance suite checks."
  spec.authors = ["Tasker Systems"]
  spec.license = "MIT"
  spec.homepage = "https://github.com/tasker-systems/tasker-messaging"
  spec.required_ruby_version = ">= 3.1"

  spec.files = Dir["lib/**/*.rb", "src/**/*.rs", "ext/**/*.rb", "Cargo.toml", "Cargo.lock",
                   "README.md"]
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/tasker_messaging_native/extconf.rb"]

  spec.add_dependency "rb_sys", "~> 0.9"
  spec.add_development_dependency "minitest", "~> 5.0"
end

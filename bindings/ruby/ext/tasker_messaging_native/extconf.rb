# frozen_string_literal: true

# Used by `gem install` (with the registry): rb_sys drives cargo on ../../Cargo.toml and
# installs the library as tasker_core/tasker_messaging_native. Without a registry, use
# bindings/ruby/build.sh instead.
require "mkmf"
require "rb_sys/mkmf"

create_rust_makefile("tasker_core/tasker_messaging_native") do |r|
  r.ext_dir = "../.."
end

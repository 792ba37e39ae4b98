#include "ddpm/io/torch_pickle.h"

#include <cstring>
#include <filesystem>
#include <string>
#include <tuple>
#include <unordered_map>

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

namespace ddpm {
namespace {

// One entry of the unpickler's stack: a value, or a reference to a global
// (a class or function). A global inside a container, such as the storage
// type in a persistent id, is kept there as its name after kGlobalTag.
struct Item {
  c10::IValue value;
  std::string global;
};

constexpr char kGlobalTag[] = "\x01global:";

torch::ScalarType storage_dtype(const std::string& global) {
  static const std::unordered_map<std::string, torch::ScalarType> types = {
      {"torch FloatStorage", torch::kFloat32},
      {"torch DoubleStorage", torch::kFloat64},
      {"torch HalfStorage", torch::kFloat16},
      {"torch BFloat16Storage", torch::kBFloat16},
      {"torch LongStorage", torch::kInt64},
      {"torch IntStorage", torch::kInt32},
      {"torch ShortStorage", torch::kInt16},
      {"torch CharStorage", torch::kInt8},
      {"torch ByteStorage", torch::kUInt8},
      {"torch BoolStorage", torch::kBool},
  };
  auto found = types.find(global);
  TORCH_CHECK(found != types.end(), "unsupported storage type \"", global,
              "\"");
  return found->second;
}

// Reads a record of the archive after checking that its declared size fits
// in the file. torch.save stores records uncompressed, so a larger size is
// a corrupt header, and LibTorch would allocate all of it before reading.
std::tuple<at::DataPtr, size_t> read_record(
    caffe2::serialize::PyTorchStreamReader& archive, const std::string& name,
    const std::string& path) {
  std::error_code error;
  const auto file_size = std::filesystem::file_size(path, error);
  const size_t declared = archive.getRecordSize(name);
  TORCH_CHECK(!error && declared <= file_size, "\"", path, "\" is corrupt: ",
              "record \"", name, "\" declares ", declared,
              " bytes, more than the file's ", file_size);
  return archive.getRecord(name);
}

class Unpickler {
 public:
  Unpickler(const std::string& path,
            caffe2::serialize::PyTorchStreamReader& archive,
            const char* data, size_t size)
      : path_(path), archive_(archive), data_(data), size_(size) {}

  c10::IValue run() {
    while (true) {
      const size_t at = position_;
      const auto opcode = static_cast<uint8_t>(read_byte());
      if (opcode == '.') { // STOP
        TORCH_CHECK(stack_.size() == 1, error(at, "STOP with ",
                                              stack_.size(),
                                              " values on the stack"));
        return stack_.back().value;
      }
      step(opcode, at);
    }
  }

 private:
  template <typename... Args>
  std::string error(size_t at, const Args&... args) const {
    return c10::str("invalid pickle in \"", path_, "\" at byte ", at, ": ",
                    args...);
  }

  void need(size_t n) const {
    TORCH_CHECK(n <= size_ - position_,
                error(position_, "the data ends early (truncated file)"));
  }

  char read_byte() {
    need(1);
    return data_[position_++];
  }

  template <typename T>
  T read_little_endian() {
    need(sizeof(T));
    T value;
    std::memcpy(&value, data_ + position_, sizeof(T));
    position_ += sizeof(T);
    return value;
  }

  std::string read_bytes(size_t n) {
    need(n);
    std::string text(data_ + position_, n);
    position_ += n;
    return text;
  }

  std::string read_line() {
    const char* begin = data_ + position_;
    const void* end = std::memchr(begin, '\n', size_ - position_);
    TORCH_CHECK(end, error(position_, "unterminated line"));
    const size_t length = static_cast<const char*>(end) - begin;
    position_ += length + 1;
    return std::string(begin, length);
  }

  Item pop(size_t at) {
    TORCH_CHECK(stack_.size() > floor(), error(at, "pop from an empty stack"));
    Item item = std::move(stack_.back());
    stack_.pop_back();
    return item;
  }

  c10::IValue pop_value(size_t at) { return pop(at).value; }

  Item& top(size_t at) {
    TORCH_CHECK(stack_.size() > floor(), error(at, "empty stack"));
    return stack_.back();
  }

  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }

  // Pops everything above the last MARK.
  std::vector<c10::IValue> pop_to_mark(size_t at) {
    TORCH_CHECK(!marks_.empty(), error(at, "no MARK on the stack"));
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<c10::IValue> values;
    for (size_t i = mark; i < stack_.size(); ++i) {
      values.push_back(stack_[i].value);
    }
    stack_.resize(mark);
    return values;
  }

  void push(c10::IValue value) { stack_.push_back({std::move(value), {}}); }

  void memo_put(uint32_t index, size_t at) {
    memo_[index] = top(at);
  }

  void memo_get(uint32_t index, size_t at) {
    auto found = memo_.find(index);
    TORCH_CHECK(found != memo_.end(), error(at, "unknown memo ", index));
    stack_.push_back(found->second);
  }

  void set_items(const c10::IValue& target,
                 const std::vector<c10::IValue>& pairs, size_t at) {
    TORCH_CHECK(target.isGenericDict(), error(at, "SETITEM on a non-dict"));
    TORCH_CHECK(pairs.size() % 2 == 0, error(at, "odd SETITEMS"));
    auto dict = target.toGenericDict();
    for (size_t i = 0; i < pairs.size(); i += 2) {
      dict.insert_or_assign(pairs[i], pairs[i + 1]);
    }
  }

  void append(const c10::IValue& target,
              const std::vector<c10::IValue>& values, size_t at) {
    TORCH_CHECK(target.isList(), error(at, "APPEND to a non-list"));
    auto list = target.toList();
    for (const auto& value : values) {
      list.push_back(value);
    }
  }

  static std::vector<int64_t> int_tuple(const c10::IValue& value) {
    std::vector<int64_t> values;
    for (const auto& element : value.toTupleRef().elements()) {
      values.push_back(element.toInt());
    }
    return values;
  }

  // torch.save's persistent id: ('storage', type, key, location, numel).
  c10::IValue load_storage(const c10::IValue& pid, size_t at) {
    TORCH_CHECK(pid.isTuple(), error(at, "persistent id is not a tuple"));
    const auto& parts = pid.toTupleRef().elements();
    TORCH_CHECK(parts.size() == 5 && parts[0].isString() &&
                    parts[0].toStringRef() == "storage",
                error(at, "unsupported persistent id"));
    TORCH_CHECK(parts[1].isString() && parts[2].isString() &&
                    parts[4].isInt(),
                error(at, "malformed storage reference"));
    const std::string& type = parts[1].toStringRef();
    const size_t tag = std::strlen(kGlobalTag);
    TORCH_CHECK(type.compare(0, tag, kGlobalTag) == 0,
                error(at, "storage type is not a global"));
    const std::string key = parts[2].toStringRef();
    auto cached = storages_.find(key);
    if (cached != storages_.end()) {
      return cached->second;
    }
    const auto dtype = storage_dtype(type.substr(tag));
    const int64_t numel = parts[4].toInt();
    const std::string record = "data/" + key;
    TORCH_CHECK(numel >= 0 && archive_.hasRecord(record),
                error(at, "missing tensor data \"", record, "\""));
    auto [bytes, size] = read_record(archive_, record, path_);
    const size_t expected = size_t(numel) * c10::elementSize(dtype);
    TORCH_CHECK(size == expected,
                error(at, "tensor data \"", record, "\" has ", size,
                      " bytes, expected ", expected));
    auto storage = torch::empty({numel}, torch::TensorOptions(dtype));
    if (size > 0) {
      std::memcpy(storage.data_ptr(), bytes.get(), size);
    }
    storages_[key] = storage;
    return storage;
  }

  c10::IValue rebuild_tensor(const std::vector<c10::IValue>& args,
                             size_t at) {
    TORCH_CHECK(args.size() >= 4 && args[0].isTensor(),
                error(at, "malformed _rebuild_tensor_v2 arguments"));
    auto storage = args[0].toTensor();
    const int64_t offset = args[1].toInt();
    const auto sizes = int_tuple(args[2]);
    const auto strides = int_tuple(args[3]);
    TORCH_CHECK(sizes.size() == strides.size(),
                error(at, "tensor sizes and strides differ in length"));
    // The furthest element must lie inside the storage.
    int64_t last = offset;
    bool empty = false;
    for (size_t i = 0; i < sizes.size(); ++i) {
      TORCH_CHECK(sizes[i] >= 0 && strides[i] >= 0,
                  error(at, "negative tensor size or stride"));
      empty |= sizes[i] == 0;
      last += (sizes[i] - 1) * strides[i];
    }
    TORCH_CHECK(offset >= 0 && (empty || last < storage.numel()),
                error(at, "tensor view exceeds its storage of ",
                      storage.numel(), " elements"));
    if (empty) {
      return torch::empty(sizes, storage.options());
    }
    return storage.as_strided(sizes, strides, offset).clone();
  }

  void reduce(size_t at) {
    auto args_value = pop_value(at);
    Item callable = pop(at);
    TORCH_CHECK(!callable.global.empty(), error(at, "REDUCE of a non-global"));
    TORCH_CHECK(args_value.isTuple(), error(at, "REDUCE arguments"));
    const auto& args = args_value.toTupleRef().elements();
    const std::vector<c10::IValue> arguments(args.begin(), args.end());
    if (callable.global == "collections OrderedDict") {
      push(c10::impl::GenericDict(c10::AnyType::get(), c10::AnyType::get()));
    } else if (callable.global == "torch._utils _rebuild_tensor_v2") {
      push(rebuild_tensor(arguments, at));
    } else if (callable.global == "torch._utils _rebuild_parameter") {
      TORCH_CHECK(!arguments.empty() && arguments[0].isTensor(),
                  error(at, "malformed _rebuild_parameter arguments"));
      push(arguments[0]);
    } else {
      TORCH_CHECK(false, error(at, "unsupported global \"", callable.global,
                               "\" (only tensors and containers load)"));
    }
  }

  void step(uint8_t opcode, size_t at) {
    switch (opcode) {
      case 0x80: // PROTO
        read_byte();
        break;
      case 0x95: // FRAME
        read_little_endian<uint64_t>();
        break;
      case '}': // EMPTY_DICT
        push(c10::impl::GenericDict(c10::AnyType::get(), c10::AnyType::get()));
        break;
      case ']': // EMPTY_LIST
        push(c10::impl::GenericList(c10::AnyType::get()));
        break;
      case ')': // EMPTY_TUPLE
        push(c10::ivalue::Tuple::create(std::vector<c10::IValue>{}));
        break;
      case '(': // MARK
        marks_.push_back(stack_.size());
        break;
      case 'X': { // BINUNICODE
        const auto length = read_little_endian<uint32_t>();
        push(read_bytes(length));
        break;
      }
      case 0x8c: { // SHORT_BINUNICODE
        const auto length = static_cast<uint8_t>(read_byte());
        push(read_bytes(length));
        break;
      }
      case 'J': // BININT
        push(int64_t(read_little_endian<int32_t>()));
        break;
      case 'K': // BININT1
        push(int64_t(static_cast<uint8_t>(read_byte())));
        break;
      case 'M': // BININT2
        push(int64_t(read_little_endian<uint16_t>()));
        break;
      case 0x8a: { // LONG1
        const auto length = static_cast<uint8_t>(read_byte());
        TORCH_CHECK(length <= 8, error(at, "integer of ", int(length),
                                       " bytes is too large"));
        const std::string bytes = read_bytes(length);
        uint64_t value = 0;
        for (size_t i = 0; i < length; ++i) {
          value |= uint64_t(static_cast<uint8_t>(bytes[i])) << (8 * i);
        }
        if (length > 0 && length < 8 && (bytes[length - 1] & 0x80)) {
          value |= ~uint64_t{0} << (8 * length); // sign-extend
        }
        push(static_cast<int64_t>(value));
        break;
      }
      case 'G': { // BINFLOAT, big-endian
        const std::string bytes = read_bytes(8);
        uint64_t bits = 0;
        for (char byte : bytes) {
          bits = (bits << 8) | static_cast<uint8_t>(byte);
        }
        double value;
        std::memcpy(&value, &bits, sizeof(value));
        push(value);
        break;
      }
      case 'N': // NONE
        push(c10::IValue());
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 't': // TUPLE
        push(c10::ivalue::Tuple::create(pop_to_mark(at)));
        break;
      case 0x85: // TUPLE1
      case 0x86: // TUPLE2
      case 0x87: { // TUPLE3
        std::vector<c10::IValue> values(opcode - 0x84);
        for (size_t i = values.size(); i-- > 0;) {
          values[i] = pop_value(at);
        }
        push(c10::ivalue::Tuple::create(std::move(values)));
        break;
      }
      case 'a': { // APPEND
        auto value = pop_value(at);
        append(top(at).value, {value}, at);
        break;
      }
      case 'e': { // APPENDS
        auto values = pop_to_mark(at);
        append(top(at).value, values, at);
        break;
      }
      case 's': { // SETITEM
        auto value = pop_value(at);
        auto key = pop_value(at);
        set_items(top(at).value, {key, value}, at);
        break;
      }
      case 'u': { // SETITEMS
        auto pairs = pop_to_mark(at);
        set_items(top(at).value, pairs, at);
        break;
      }
      case 'q': // BINPUT
        memo_put(static_cast<uint8_t>(read_byte()), at);
        break;
      case 'r': // LONG_BINPUT
        memo_put(read_little_endian<uint32_t>(), at);
        break;
      case 0x94: // MEMOIZE
        memo_put(uint32_t(memo_.size()), at);
        break;
      case 'h': // BINGET
        memo_get(static_cast<uint8_t>(read_byte()), at);
        break;
      case 'j': // LONG_BINGET
        memo_get(read_little_endian<uint32_t>(), at);
        break;
      case 'c': { // GLOBAL
        const std::string module = read_line();
        const std::string name = read_line();
        const std::string global = module + " " + name;
        stack_.push_back({c10::IValue(kGlobalTag + global), global});
        break;
      }
      case 'R': // REDUCE
        reduce(at);
        break;
      case 'b': { // BUILD: state of an OrderedDict (_metadata) or a tensor
        pop(at);
        top(at);
        break;
      }
      case 'Q': { // BINPERSID
        auto pid = pop_value(at);
        push(load_storage(pid, at));
        break;
      }
      default:
        TORCH_CHECK(false, error(at, "unsupported opcode 0x", std::hex,
                                 int(opcode)));
    }
  }

  std::string path_;
  caffe2::serialize::PyTorchStreamReader& archive_;
  const char* data_;
  size_t size_;
  size_t position_ = 0;
  std::vector<Item> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, Item> memo_;
  std::unordered_map<std::string, c10::IValue> storages_;
};

} // namespace

c10::IValue read_torch_save(const std::string& path) {
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> archive;
  try {
    archive = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const c10::Error& error) {
    TORCH_CHECK(false, "\"", path, "\" is not a torch.save zip archive: ",
                error.what_without_backtrace());
  }
  if (archive->hasRecord("byteorder")) {
    auto [bytes, size] = read_record(*archive, "byteorder", path);
    const std::string order(static_cast<const char*>(bytes.get()), size);
    TORCH_CHECK(order == "little", "\"", path, "\" stores ", order,
                "-endian tensors; only little-endian files are supported");
  }
  TORCH_CHECK(archive->hasRecord("data.pkl"), "\"", path,
              "\" has no data.pkl record");
  auto [bytes, size] = read_record(*archive, "data.pkl", path);
  Unpickler unpickler(path, *archive, static_cast<const char*>(bytes.get()),
                      size);
  return unpickler.run();
}

} // namespace ddpm

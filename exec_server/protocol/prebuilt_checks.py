"""The shipped params schemas' checks, compiled ahead of time: generated, do not edit.

Written by ``python -m exec_server.protocol.prebuild --write`` from fastjsonschema 2.22.3's
code for the schema files whose CRC-32 is ``DIGEST``; a server with other files compiles them itself
(:mod:`exec_server.protocol.compiled`).  ``CHECKS`` maps each file to its check, None where
jsonschema alone decides.
"""
# flake8: noqa


class JsonSchemaValueException(ValueError):
    """The instance does not match (fastjsonschema's exception, stood in for: jsonschema words the error)."""


JsonSchemaValuesException = JsonSchemaValueException
Decimal = float  # json.loads never makes a decimal.Decimal; compiled._has_float sends one to jsonschema
NoneType = type(None)
DIGEST = 0xd36fd030
GENERATOR = "fastjsonschema 2.22.3"


def validate_urn_exec_server_common_json___defs_base64(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (str)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be string")
    return data


def validate_urn_exec_server_common_json___defs_filesystempolicy(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['type']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "type" in data_keys:
            data_keys.remove("type")
            data__type = data["type"]
            if not (isinstance(data__type, str) and data__type == 'restricted' or isinstance(data__type, str) and data__type == 'unrestricted'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".type must be one of ['restricted', 'unrestricted']")
        if "entries" in data_keys:
            data_keys.remove("entries")
            data__entries = data["entries"]
            if not isinstance(data__entries, (list, tuple)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".entries must be array")
            data__entries_is_list = isinstance(data__entries, (list, tuple))
            if data__entries_is_list:
                data__entries_len = len(data__entries)
                for data__entries_x, data__entries_item in enumerate(data__entries):
                    validate_urn_exec_server_common_json___defs_sandboxentry(data__entries_item, custom_formats, (name_prefix or "data") + ".entries[{data__entries_x}]".format(**locals()))
    return data


def validate_urn_exec_server_common_json___defs_fileuri(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (str)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be string")
    return data


def validate_urn_exec_server_common_json___defs_permissionprofile(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['type']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "type" in data_keys:
            data_keys.remove("type")
            data__type = data["type"]
            if not (isinstance(data__type, str) and data__type == 'disabled' or isinstance(data__type, str) and data__type == 'external' or isinstance(data__type, str) and data__type == 'managed'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".type must be one of ['disabled', 'external', 'managed']")
        if "network" in data_keys:
            data_keys.remove("network")
            data__network = data["network"]
            if not (isinstance(data__network, str) and data__network == 'restricted' or isinstance(data__network, str) and data__network == 'enabled'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".network must be one of ['restricted', 'enabled']")
        if "file_system" in data_keys:
            data_keys.remove("file_system")
            data__filesystem = data["file_system"]
            validate_urn_exec_server_common_json___defs_filesystempolicy(data__filesystem, custom_formats, (name_prefix or "data") + ".file_system")
    return data


def validate_urn_exec_server_common_json___defs_ptysize(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['rows', 'cols']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "rows" in data_keys:
            data_keys.remove("rows")
            data__rows = data["rows"]
            if not isinstance(data__rows, (int)) and not (isinstance(data__rows, float) and data__rows.is_integer()) or isinstance(data__rows, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".rows must be integer")
            if isinstance(data__rows, (int, float, Decimal)) and not isinstance(data__rows, bool):
                if data__rows < 1:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".rows must be bigger than or equal to 1")
                if data__rows > 65535:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".rows must be smaller than or equal to 65535")
        if "cols" in data_keys:
            data_keys.remove("cols")
            data__cols = data["cols"]
            if not isinstance(data__cols, (int)) and not (isinstance(data__cols, float) and data__cols.is_integer()) or isinstance(data__cols, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".cols must be integer")
            if isinstance(data__cols, (int, float, Decimal)) and not isinstance(data__cols, bool):
                if data__cols < 1:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".cols must be bigger than or equal to 1")
                if data__cols > 65535:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".cols must be smaller than or equal to 65535")
    return data


def validate_urn_exec_server_common_json___defs_sandbox(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict, NoneType)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object or null")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['permissions', 'windowsSandboxLevel']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "permissions" in data_keys:
            data_keys.remove("permissions")
            data__permissions = data["permissions"]
            validate_urn_exec_server_common_json___defs_permissionprofile(data__permissions, custom_formats, (name_prefix or "data") + ".permissions")
        if "cwd" in data_keys:
            data_keys.remove("cwd")
            data__cwd = data["cwd"]
            validate_urn_exec_server_common_json___defs_fileuri(data__cwd, custom_formats, (name_prefix or "data") + ".cwd")
        if "workspaceRoots" in data_keys:
            data_keys.remove("workspaceRoots")
            data__workspaceRoots = data["workspaceRoots"]
            if not isinstance(data__workspaceRoots, (list, tuple)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".workspaceRoots must be array")
            data__workspaceRoots_is_list = isinstance(data__workspaceRoots, (list, tuple))
            if data__workspaceRoots_is_list:
                data__workspaceRoots_len = len(data__workspaceRoots)
                for data__workspaceRoots_x, data__workspaceRoots_item in enumerate(data__workspaceRoots):
                    validate_urn_exec_server_common_json___defs_fileuri(data__workspaceRoots_item, custom_formats, (name_prefix or "data") + ".workspaceRoots[{data__workspaceRoots_x}]".format(**locals()))
        if "windowsSandboxLevel" in data_keys:
            data_keys.remove("windowsSandboxLevel")
            data__windowsSandboxLevel = data["windowsSandboxLevel"]
            if not (isinstance(data__windowsSandboxLevel, str) and data__windowsSandboxLevel == 'disabled' or isinstance(data__windowsSandboxLevel, str) and data__windowsSandboxLevel == 'restricted-token' or isinstance(data__windowsSandboxLevel, str) and data__windowsSandboxLevel == 'elevated'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".windowsSandboxLevel must be one of ['disabled', 'restricted-token', 'elevated']")
        if "windowsSandboxPrivateDesktop" in data_keys:
            data_keys.remove("windowsSandboxPrivateDesktop")
            data__windowsSandboxPrivateDesktop = data["windowsSandboxPrivateDesktop"]
            if not isinstance(data__windowsSandboxPrivateDesktop, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".windowsSandboxPrivateDesktop must be boolean")
        if "useLegacyLandlock" in data_keys:
            data_keys.remove("useLegacyLandlock")
            data__useLegacyLandlock = data["useLegacyLandlock"]
            if not isinstance(data__useLegacyLandlock, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".useLegacyLandlock must be boolean")
    return data


def validate_urn_exec_server_common_json___defs_sandboxentry(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path', 'access']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_sandboxpath(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "access" in data_keys:
            data_keys.remove("access")
            data__access = data["access"]
            if not (isinstance(data__access, str) and data__access == 'read' or isinstance(data__access, str) and data__access == 'write' or isinstance(data__access, str) and data__access == 'none' or isinstance(data__access, str) and data__access == 'deny'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".access must be one of ['read', 'write', 'none', 'deny']")
    return data


def validate_urn_exec_server_common_json___defs_sandboxpath(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['type']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "type" in data_keys:
            data_keys.remove("type")
            data__type = data["type"]
            if not (isinstance(data__type, str) and data__type == 'path' or isinstance(data__type, str) and data__type == 'special' or isinstance(data__type, str) and data__type == 'glob_pattern'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".type must be one of ['path', 'special', 'glob_pattern']")
    return data


def validate_urn_exec_server_common_json___defs_stringmap(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data_keys = set(data.keys())
        for data_key in data_keys:
            if data_key not in []:
                data_value = data.get(data_key)
                if not isinstance(data_value, (str)):
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".{data_key}".format(**locals()) + " must be string")
    return data


def validate_urn_exec_server_environment_info_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict, NoneType)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object or null")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data_len = len(data)
        if data_len > 0:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain less than or equal to 0 properties")
    return data


def validate_urn_exec_server_environment_status_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict, NoneType)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object or null")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data_len = len(data)
        if data_len > 0:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain less than or equal to 0 properties")
    return data


def validate_urn_exec_server_fs_canonicalize_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
    return data


def validate_urn_exec_server_fs_close_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['handleId']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "handleId" in data_keys:
            data_keys.remove("handleId")
            data__handleId = data["handleId"]
            if not isinstance(data__handleId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".handleId must be string")
        if "commit" in data_keys:
            data_keys.remove("commit")
            data__commit = data["commit"]
            if not isinstance(data__commit, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".commit must be boolean")
    return data


def validate_urn_exec_server_fs_copy_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['sourcePath', 'destinationPath', 'recursive']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "sourcePath" in data_keys:
            data_keys.remove("sourcePath")
            data__sourcePath = data["sourcePath"]
            validate_urn_exec_server_common_json___defs_fileuri(data__sourcePath, custom_formats, (name_prefix or "data") + ".sourcePath")
        if "destinationPath" in data_keys:
            data_keys.remove("destinationPath")
            data__destinationPath = data["destinationPath"]
            validate_urn_exec_server_common_json___defs_fileuri(data__destinationPath, custom_formats, (name_prefix or "data") + ".destinationPath")
        if "recursive" in data_keys:
            data_keys.remove("recursive")
            data__recursive = data["recursive"]
            if not isinstance(data__recursive, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".recursive must be boolean")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
    return data


def validate_urn_exec_server_fs_createdirectory_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "recursive" in data_keys:
            data_keys.remove("recursive")
            data__recursive = data["recursive"]
            if not isinstance(data__recursive, (bool, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".recursive must be boolean or null")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
    return data


def validate_urn_exec_server_fs_getmetadata_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
        if "followSymlinks" in data_keys:
            data_keys.remove("followSymlinks")
            data__followSymlinks = data["followSymlinks"]
            if not isinstance(data__followSymlinks, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".followSymlinks must be boolean")
    return data


def validate_urn_exec_server_fs_open_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['handleId', 'path']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "handleId" in data_keys:
            data_keys.remove("handleId")
            data__handleId = data["handleId"]
            if not isinstance(data__handleId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".handleId must be string")
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
        if "mode" in data_keys:
            data_keys.remove("mode")
            data__mode = data["mode"]
            if not (isinstance(data__mode, str) and data__mode == 'read' or isinstance(data__mode, str) and data__mode == 'replace'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".mode must be one of ['read', 'replace']")
        if "atomic" in data_keys:
            data_keys.remove("atomic")
            data__atomic = data["atomic"]
            if not isinstance(data__atomic, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".atomic must be boolean")
    return data


def validate_urn_exec_server_fs_readblock_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['handleId', 'offset', 'len']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "handleId" in data_keys:
            data_keys.remove("handleId")
            data__handleId = data["handleId"]
            if not isinstance(data__handleId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".handleId must be string")
        if "offset" in data_keys:
            data_keys.remove("offset")
            data__offset = data["offset"]
            if not isinstance(data__offset, (int)) and not (isinstance(data__offset, float) and data__offset.is_integer()) or isinstance(data__offset, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".offset must be integer")
            if isinstance(data__offset, (int, float, Decimal)) and not isinstance(data__offset, bool):
                if data__offset < 0:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".offset must be bigger than or equal to 0")
                if data__offset > 18446744073709551615:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".offset must be smaller than or equal to 18446744073709551615")
        if "len" in data_keys:
            data_keys.remove("len")
            data__len = data["len"]
            if not isinstance(data__len, (int)) and not (isinstance(data__len, float) and data__len.is_integer()) or isinstance(data__len, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".len must be integer")
            if isinstance(data__len, (int, float, Decimal)) and not isinstance(data__len, bool):
                if data__len < 0:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".len must be bigger than or equal to 0")
                if data__len > 18446744073709551615:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".len must be smaller than or equal to 18446744073709551615")
    return data


def validate_urn_exec_server_fs_readdirectory_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
    return data


def validate_urn_exec_server_fs_readfile_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
        if "followSymlinks" in data_keys:
            data_keys.remove("followSymlinks")
            data__followSymlinks = data["followSymlinks"]
            if not isinstance(data__followSymlinks, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".followSymlinks must be boolean")
    return data


def validate_urn_exec_server_fs_remove_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "recursive" in data_keys:
            data_keys.remove("recursive")
            data__recursive = data["recursive"]
            if not isinstance(data__recursive, (bool, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".recursive must be boolean or null")
        if "force" in data_keys:
            data_keys.remove("force")
            data__force = data["force"]
            if not isinstance(data__force, (bool, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".force must be boolean or null")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
        if "followSymlinks" in data_keys:
            data_keys.remove("followSymlinks")
            data__followSymlinks = data["followSymlinks"]
            if not isinstance(data__followSymlinks, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".followSymlinks must be boolean")
    return data


def validate_urn_exec_server_fs_walk_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path', 'options']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
        if "options" in data_keys:
            data_keys.remove("options")
            data__options = data["options"]
            if not isinstance(data__options, (dict)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".options must be object")
            data__options_is_dict = isinstance(data__options, dict)
            if data__options_is_dict:
                data__options__missing_keys = set(['maxDepth', 'maxDirectories', 'maxEntries', 'followDirectorySymlinks']) - data__options.keys()
                if data__options__missing_keys:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".options must contain ")
                data__options_keys = set(data__options.keys())
                if "maxDepth" in data__options_keys:
                    data__options_keys.remove("maxDepth")
                    data__options__maxDepth = data__options["maxDepth"]
                    if not isinstance(data__options__maxDepth, (int)) and not (isinstance(data__options__maxDepth, float) and data__options__maxDepth.is_integer()) or isinstance(data__options__maxDepth, bool):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxDepth must be integer")
                    if isinstance(data__options__maxDepth, (int, float, Decimal)) and not isinstance(data__options__maxDepth, bool):
                        if data__options__maxDepth < 0:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxDepth must be bigger than or equal to 0")
                        if data__options__maxDepth > 18446744073709551615:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxDepth must be smaller than or equal to 18446744073709551615")
                if "maxDirectories" in data__options_keys:
                    data__options_keys.remove("maxDirectories")
                    data__options__maxDirectories = data__options["maxDirectories"]
                    if not isinstance(data__options__maxDirectories, (int)) and not (isinstance(data__options__maxDirectories, float) and data__options__maxDirectories.is_integer()) or isinstance(data__options__maxDirectories, bool):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxDirectories must be integer")
                    if isinstance(data__options__maxDirectories, (int, float, Decimal)) and not isinstance(data__options__maxDirectories, bool):
                        if data__options__maxDirectories < 0:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxDirectories must be bigger than or equal to 0")
                        if data__options__maxDirectories > 18446744073709551615:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxDirectories must be smaller than or equal to 18446744073709551615")
                if "maxEntries" in data__options_keys:
                    data__options_keys.remove("maxEntries")
                    data__options__maxEntries = data__options["maxEntries"]
                    if not isinstance(data__options__maxEntries, (int)) and not (isinstance(data__options__maxEntries, float) and data__options__maxEntries.is_integer()) or isinstance(data__options__maxEntries, bool):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxEntries must be integer")
                    if isinstance(data__options__maxEntries, (int, float, Decimal)) and not isinstance(data__options__maxEntries, bool):
                        if data__options__maxEntries < 0:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxEntries must be bigger than or equal to 0")
                        if data__options__maxEntries > 18446744073709551615:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.maxEntries must be smaller than or equal to 18446744073709551615")
                if "followDirectorySymlinks" in data__options_keys:
                    data__options_keys.remove("followDirectorySymlinks")
                    data__options__followDirectorySymlinks = data__options["followDirectorySymlinks"]
                    if not isinstance(data__options__followDirectorySymlinks, (bool)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".options.followDirectorySymlinks must be boolean")
    return data


def validate_urn_exec_server_fs_writeblock_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['handleId', 'offset', 'chunk']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "handleId" in data_keys:
            data_keys.remove("handleId")
            data__handleId = data["handleId"]
            if not isinstance(data__handleId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".handleId must be string")
        if "offset" in data_keys:
            data_keys.remove("offset")
            data__offset = data["offset"]
            if not isinstance(data__offset, (int)) and not (isinstance(data__offset, float) and data__offset.is_integer()) or isinstance(data__offset, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".offset must be integer")
            if isinstance(data__offset, (int, float, Decimal)) and not isinstance(data__offset, bool):
                if data__offset < 0:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".offset must be bigger than or equal to 0")
                if data__offset > 18446744073709551615:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".offset must be smaller than or equal to 18446744073709551615")
        if "chunk" in data_keys:
            data_keys.remove("chunk")
            data__chunk = data["chunk"]
            validate_urn_exec_server_common_json___defs_base64(data__chunk, custom_formats, (name_prefix or "data") + ".chunk")
    return data


def validate_urn_exec_server_fs_writefile_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['path', 'dataBase64']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "path" in data_keys:
            data_keys.remove("path")
            data__path = data["path"]
            validate_urn_exec_server_common_json___defs_fileuri(data__path, custom_formats, (name_prefix or "data") + ".path")
        if "dataBase64" in data_keys:
            data_keys.remove("dataBase64")
            data__dataBase64 = data["dataBase64"]
            if not isinstance(data__dataBase64, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".dataBase64 must be string")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
        if "followSymlinks" in data_keys:
            data_keys.remove("followSymlinks")
            data__followSymlinks = data["followSymlinks"]
            if not isinstance(data__followSymlinks, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".followSymlinks must be boolean")
    return data


def validate_urn_exec_server_initialize_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['clientName']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "clientName" in data_keys:
            data_keys.remove("clientName")
            data__clientName = data["clientName"]
            if not isinstance(data__clientName, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".clientName must be string")
        if "resumeSessionId" in data_keys:
            data_keys.remove("resumeSessionId")
            data__resumeSessionId = data["resumeSessionId"]
            if not isinstance(data__resumeSessionId, (str, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".resumeSessionId must be string or null")
    return data


def validate_urn_exec_server_initialized_params_json(data, custom_formats={}, name_prefix=None):
    return data


def validate_urn_exec_server_process_read_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['processId']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "processId" in data_keys:
            data_keys.remove("processId")
            data__processId = data["processId"]
            if not isinstance(data__processId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".processId must be string")
        if "afterSeq" in data_keys:
            data_keys.remove("afterSeq")
            data__afterSeq = data["afterSeq"]
            if not isinstance(data__afterSeq, (int, NoneType)) and not (isinstance(data__afterSeq, float) and data__afterSeq.is_integer()) or isinstance(data__afterSeq, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".afterSeq must be integer or null")
            if isinstance(data__afterSeq, (int, float, Decimal)) and not isinstance(data__afterSeq, bool):
                if data__afterSeq < 0:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".afterSeq must be bigger than or equal to 0")
                if data__afterSeq > 18446744073709551615:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".afterSeq must be smaller than or equal to 18446744073709551615")
        if "maxBytes" in data_keys:
            data_keys.remove("maxBytes")
            data__maxBytes = data["maxBytes"]
            if not isinstance(data__maxBytes, (int, NoneType)) and not (isinstance(data__maxBytes, float) and data__maxBytes.is_integer()) or isinstance(data__maxBytes, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".maxBytes must be integer or null")
            if isinstance(data__maxBytes, (int, float, Decimal)) and not isinstance(data__maxBytes, bool):
                if data__maxBytes < 0:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".maxBytes must be bigger than or equal to 0")
                if data__maxBytes > 18446744073709551615:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".maxBytes must be smaller than or equal to 18446744073709551615")
        if "waitMs" in data_keys:
            data_keys.remove("waitMs")
            data__waitMs = data["waitMs"]
            if not isinstance(data__waitMs, (int, NoneType)) and not (isinstance(data__waitMs, float) and data__waitMs.is_integer()) or isinstance(data__waitMs, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".waitMs must be integer or null")
            if isinstance(data__waitMs, (int, float, Decimal)) and not isinstance(data__waitMs, bool):
                if data__waitMs < 0:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".waitMs must be bigger than or equal to 0")
                if data__waitMs > 18446744073709551615:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".waitMs must be smaller than or equal to 18446744073709551615")
    return data


def validate_urn_exec_server_process_resize_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['processId', 'rows', 'cols']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "processId" in data_keys:
            data_keys.remove("processId")
            data__processId = data["processId"]
            if not isinstance(data__processId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".processId must be string")
        if "rows" in data_keys:
            data_keys.remove("rows")
            data__rows = data["rows"]
            if not isinstance(data__rows, (int)) and not (isinstance(data__rows, float) and data__rows.is_integer()) or isinstance(data__rows, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".rows must be integer")
            if isinstance(data__rows, (int, float, Decimal)) and not isinstance(data__rows, bool):
                if data__rows < 1:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".rows must be bigger than or equal to 1")
                if data__rows > 65535:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".rows must be smaller than or equal to 65535")
        if "cols" in data_keys:
            data_keys.remove("cols")
            data__cols = data["cols"]
            if not isinstance(data__cols, (int)) and not (isinstance(data__cols, float) and data__cols.is_integer()) or isinstance(data__cols, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".cols must be integer")
            if isinstance(data__cols, (int, float, Decimal)) and not isinstance(data__cols, bool):
                if data__cols < 1:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".cols must be bigger than or equal to 1")
                if data__cols > 65535:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".cols must be smaller than or equal to 65535")
    return data


def validate_urn_exec_server_process_signal_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['processId', 'signal']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "processId" in data_keys:
            data_keys.remove("processId")
            data__processId = data["processId"]
            if not isinstance(data__processId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".processId must be string")
        if "signal" in data_keys:
            data_keys.remove("signal")
            data__signal = data["signal"]
            if not (isinstance(data__signal, str) and data__signal == 'interrupt'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".signal must be one of ['interrupt']")
    return data


def validate_urn_exec_server_process_start_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['processId', 'argv', 'cwd', 'env', 'tty']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "processId" in data_keys:
            data_keys.remove("processId")
            data__processId = data["processId"]
            if not isinstance(data__processId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".processId must be string")
        if "argv" in data_keys:
            data_keys.remove("argv")
            data__argv = data["argv"]
            if not isinstance(data__argv, (list, tuple)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".argv must be array")
            data__argv_is_list = isinstance(data__argv, (list, tuple))
            if data__argv_is_list:
                data__argv_len = len(data__argv)
                for data__argv_x, data__argv_item in enumerate(data__argv):
                    if not isinstance(data__argv_item, (str)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".argv[{data__argv_x}]".format(**locals()) + " must be string")
        if "cwd" in data_keys:
            data_keys.remove("cwd")
            data__cwd = data["cwd"]
            validate_urn_exec_server_common_json___defs_fileuri(data__cwd, custom_formats, (name_prefix or "data") + ".cwd")
        if "envPolicy" in data_keys:
            data_keys.remove("envPolicy")
            data__envPolicy = data["envPolicy"]
            if not isinstance(data__envPolicy, (dict, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".envPolicy must be object or null")
            data__envPolicy_is_dict = isinstance(data__envPolicy, dict)
            if data__envPolicy_is_dict:
                data__envPolicy__missing_keys = set(['inherit', 'ignoreDefaultExcludes', 'exclude', 'set', 'includeOnly']) - data__envPolicy.keys()
                if data__envPolicy__missing_keys:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".envPolicy must contain ")
                data__envPolicy_keys = set(data__envPolicy.keys())
                if "inherit" in data__envPolicy_keys:
                    data__envPolicy_keys.remove("inherit")
                    data__envPolicy__inherit = data__envPolicy["inherit"]
                    if not (isinstance(data__envPolicy__inherit, str) and data__envPolicy__inherit == 'core' or isinstance(data__envPolicy__inherit, str) and data__envPolicy__inherit == 'all' or isinstance(data__envPolicy__inherit, str) and data__envPolicy__inherit == 'none'):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".envPolicy.inherit must be one of ['core', 'all', 'none']")
                if "ignoreDefaultExcludes" in data__envPolicy_keys:
                    data__envPolicy_keys.remove("ignoreDefaultExcludes")
                    data__envPolicy__ignoreDefaultExcludes = data__envPolicy["ignoreDefaultExcludes"]
                    if not isinstance(data__envPolicy__ignoreDefaultExcludes, (bool)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".envPolicy.ignoreDefaultExcludes must be boolean")
                if "exclude" in data__envPolicy_keys:
                    data__envPolicy_keys.remove("exclude")
                    data__envPolicy__exclude = data__envPolicy["exclude"]
                    if not isinstance(data__envPolicy__exclude, (list, tuple)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".envPolicy.exclude must be array")
                    data__envPolicy__exclude_is_list = isinstance(data__envPolicy__exclude, (list, tuple))
                    if data__envPolicy__exclude_is_list:
                        data__envPolicy__exclude_len = len(data__envPolicy__exclude)
                        for data__envPolicy__exclude_x, data__envPolicy__exclude_item in enumerate(data__envPolicy__exclude):
                            if not isinstance(data__envPolicy__exclude_item, (str)):
                                raise JsonSchemaValueException("" + (name_prefix or "data") + ".envPolicy.exclude[{data__envPolicy__exclude_x}]".format(**locals()) + " must be string")
                if "set" in data__envPolicy_keys:
                    data__envPolicy_keys.remove("set")
                    data__envPolicy__set = data__envPolicy["set"]
                    validate_urn_exec_server_common_json___defs_stringmap(data__envPolicy__set, custom_formats, (name_prefix or "data") + ".envPolicy.set")
                if "includeOnly" in data__envPolicy_keys:
                    data__envPolicy_keys.remove("includeOnly")
                    data__envPolicy__includeOnly = data__envPolicy["includeOnly"]
                    if not isinstance(data__envPolicy__includeOnly, (list, tuple)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".envPolicy.includeOnly must be array")
                    data__envPolicy__includeOnly_is_list = isinstance(data__envPolicy__includeOnly, (list, tuple))
                    if data__envPolicy__includeOnly_is_list:
                        data__envPolicy__includeOnly_len = len(data__envPolicy__includeOnly)
                        for data__envPolicy__includeOnly_x, data__envPolicy__includeOnly_item in enumerate(data__envPolicy__includeOnly):
                            if not isinstance(data__envPolicy__includeOnly_item, (str)):
                                raise JsonSchemaValueException("" + (name_prefix or "data") + ".envPolicy.includeOnly[{data__envPolicy__includeOnly_x}]".format(**locals()) + " must be string")
        if "env" in data_keys:
            data_keys.remove("env")
            data__env = data["env"]
            validate_urn_exec_server_common_json___defs_stringmap(data__env, custom_formats, (name_prefix or "data") + ".env")
        if "tty" in data_keys:
            data_keys.remove("tty")
            data__tty = data["tty"]
            if not isinstance(data__tty, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".tty must be boolean")
        if "pipeStdin" in data_keys:
            data_keys.remove("pipeStdin")
            data__pipeStdin = data["pipeStdin"]
            if not isinstance(data__pipeStdin, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".pipeStdin must be boolean")
        if "arg0" in data_keys:
            data_keys.remove("arg0")
            data__arg0 = data["arg0"]
            if not isinstance(data__arg0, (str, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".arg0 must be string or null")
        if "sandbox" in data_keys:
            data_keys.remove("sandbox")
            data__sandbox = data["sandbox"]
            validate_urn_exec_server_common_json___defs_sandbox(data__sandbox, custom_formats, (name_prefix or "data") + ".sandbox")
        if "metadata" in data_keys:
            data_keys.remove("metadata")
            data__metadata = data["metadata"]
            if not isinstance(data__metadata, (dict, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".metadata must be object or null")
            data__metadata_is_dict = isinstance(data__metadata, dict)
            if data__metadata_is_dict:
                data__metadata_keys = set(data__metadata.keys())
                if "threadId" in data__metadata_keys:
                    data__metadata_keys.remove("threadId")
                    data__metadata__threadId = data__metadata["threadId"]
                    if not isinstance(data__metadata__threadId, (str, NoneType)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".metadata.threadId must be string or null")
                if "toolCallId" in data__metadata_keys:
                    data__metadata_keys.remove("toolCallId")
                    data__metadata__toolCallId = data__metadata["toolCallId"]
                    if not isinstance(data__metadata__toolCallId, (str, NoneType)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".metadata.toolCallId must be string or null")
        if "enforceManagedNetwork" in data_keys:
            data_keys.remove("enforceManagedNetwork")
            data__enforceManagedNetwork = data["enforceManagedNetwork"]
            if not isinstance(data__enforceManagedNetwork, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".enforceManagedNetwork must be boolean")
        if "ptySize" in data_keys:
            data_keys.remove("ptySize")
            data__ptySize = data["ptySize"]
            validate_urn_exec_server_common_json___defs_ptysize(data__ptySize, custom_formats, (name_prefix or "data") + ".ptySize")
    return data


def validate_urn_exec_server_process_terminate_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['processId']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "processId" in data_keys:
            data_keys.remove("processId")
            data__processId = data["processId"]
            if not isinstance(data__processId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".processId must be string")
    return data


def validate_urn_exec_server_process_write_params_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object")
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['processId', 'chunk', 'writeId']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain ")
        data_keys = set(data.keys())
        if "processId" in data_keys:
            data_keys.remove("processId")
            data__processId = data["processId"]
            if not isinstance(data__processId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".processId must be string")
        if "chunk" in data_keys:
            data_keys.remove("chunk")
            data__chunk = data["chunk"]
            validate_urn_exec_server_common_json___defs_base64(data__chunk, custom_formats, (name_prefix or "data") + ".chunk")
        if "writeId" in data_keys:
            data_keys.remove("writeId")
            data__writeId = data["writeId"]
            if not isinstance(data__writeId, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".writeId must be string")
        if "closeStdin" in data_keys:
            data_keys.remove("closeStdin")
            data__closeStdin = data["closeStdin"]
            if not isinstance(data__closeStdin, (bool)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".closeStdin must be boolean")
    return data


CHECKS = {
    'environment/info.params.json': validate_urn_exec_server_environment_info_params_json,
    'environment/status.params.json': validate_urn_exec_server_environment_status_params_json,
    'fs/canonicalize.params.json': validate_urn_exec_server_fs_canonicalize_params_json,
    'fs/close.params.json': validate_urn_exec_server_fs_close_params_json,
    'fs/copy.params.json': validate_urn_exec_server_fs_copy_params_json,
    'fs/createDirectory.params.json': validate_urn_exec_server_fs_createdirectory_params_json,
    'fs/getMetadata.params.json': validate_urn_exec_server_fs_getmetadata_params_json,
    'fs/open.params.json': validate_urn_exec_server_fs_open_params_json,
    'fs/readBlock.params.json': validate_urn_exec_server_fs_readblock_params_json,
    'fs/readDirectory.params.json': validate_urn_exec_server_fs_readdirectory_params_json,
    'fs/readFile.params.json': validate_urn_exec_server_fs_readfile_params_json,
    'fs/remove.params.json': validate_urn_exec_server_fs_remove_params_json,
    'fs/walk.params.json': validate_urn_exec_server_fs_walk_params_json,
    'fs/writeBlock.params.json': validate_urn_exec_server_fs_writeblock_params_json,
    'fs/writeFile.params.json': validate_urn_exec_server_fs_writefile_params_json,
    'initialize.params.json': validate_urn_exec_server_initialize_params_json,
    'initialized.params.json': validate_urn_exec_server_initialized_params_json,
    'process/read.params.json': validate_urn_exec_server_process_read_params_json,
    'process/resize.params.json': validate_urn_exec_server_process_resize_params_json,
    'process/signal.params.json': validate_urn_exec_server_process_signal_params_json,
    'process/start.params.json': validate_urn_exec_server_process_start_params_json,
    'process/terminate.params.json': validate_urn_exec_server_process_terminate_params_json,
    'process/write.params.json': validate_urn_exec_server_process_write_params_json,
}
